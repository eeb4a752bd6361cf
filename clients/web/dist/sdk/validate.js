// Checks a value against the generated SERVER_FRAME_SCHEMA: the subset of
// JSON Schema the protocol crate emits (type, properties, required, $ref,
// const, enum, items, anyOf/oneOf, additionalProperties, minimum/maximum).
// Unknown fields are allowed (a newer server may add some); the generator
// refuses schema keywords this file does not check.
import { SERVER_FRAME_SCHEMA } from "./protocol.js";
const MAX_DEPTH = 32;
function typeMatches(t, v) {
    switch (t) {
        case "string": return typeof v === "string";
        case "integer": return typeof v === "number" && Number.isInteger(v);
        case "number": return typeof v === "number" && Number.isFinite(v);
        case "boolean": return typeof v === "boolean";
        case "null": return v === null;
        case "array": return Array.isArray(v);
        case "object": return typeof v === "object" && v !== null && !Array.isArray(v);
        default: return true;
    }
}
const describe = (v) => v === null ? "null" : Array.isArray(v) ? "an array" : typeof v === "object" ? "an object" : typeof v === "number" && !Number.isInteger(v) ? "a fraction" : `a ${typeof v}`;
/**
 * The first way `value` (at `path`) does not match `schema`, e.g.
 * `message.seq is a string, not integer`, or undefined when it matches.
 */
export function validate(schema, value, path, depth = 0) {
    if (schema === true || schema === undefined)
        return undefined;
    if (schema === false)
        return `${path} is not allowed`;
    if (depth > MAX_DEPTH)
        return `${path} is nested too deeply`;
    if (schema.$ref) {
        const def = SERVER_FRAME_SCHEMA[schema.$ref.replace("#/$defs/", "")];
        if (!def)
            return `${path}: no schema for ${schema.$ref}`;
        const problem = validate(def, value, path, depth + 1);
        if (problem)
            return problem;
    }
    if (schema.type !== undefined) {
        const types = Array.isArray(schema.type) ? schema.type : [schema.type];
        if (!types.some((t) => typeMatches(t, value)))
            return `${path} is ${describe(value)}, not ${types.join(" or ")}`;
    }
    if (schema.const !== undefined && value !== schema.const)
        return `${path} is not ${JSON.stringify(schema.const)}`;
    if (schema.enum && !schema.enum.includes(value))
        return `${path} is ${JSON.stringify(value)}, not one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}`;
    if (typeof value === "number") {
        if (schema.minimum !== undefined && value < schema.minimum)
            return `${path} is below ${schema.minimum}`;
        if (schema.maximum !== undefined && value > schema.maximum)
            return `${path} is above ${schema.maximum}`;
    }
    let alternatives = schema.anyOf ?? schema.oneOf;
    // A tagged union: only the member with this `type` is a candidate.
    const tag = typeof value === "object" && value !== null ? value.type : undefined;
    const tagged = alternatives?.filter((a) => (a.properties?.["type"] ?? {}).const === tag);
    if (tag !== undefined && tagged?.length)
        alternatives = tagged;
    // `X or null` with a value that is not null: the problem is X's.
    if (value !== null && alternatives && alternatives.length > 1) {
        const notNull = alternatives.filter((a) => a.type !== "null");
        if (notNull.length)
            alternatives = notNull;
    }
    if (alternatives) {
        const problems = [];
        for (const alt of alternatives) {
            const p = validate(alt, value, path, depth + 1);
            if (!p) {
                problems.length = 0;
                break;
            }
            problems.push(p);
        }
        if (problems.length)
            return problems.length === 1 ? problems[0] : `${path} matches none of: ${problems.join("; ")}`;
    }
    if (Array.isArray(value) && schema.items) {
        for (let i = 0; i < value.length; i++) {
            const p = validate(schema.items, value[i], `${path}[${i}]`, depth + 1);
            if (p)
                return p;
        }
    }
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
        const obj = value;
        for (const k of schema.required ?? [])
            if (!(k in obj))
                return `${path ? `${path} ` : ""}lacks ${k}`;
        const props = schema.properties ?? {};
        for (const [k, v] of Object.entries(obj)) {
            const sub = props[k] ?? (schema.additionalProperties === undefined ? true : schema.additionalProperties);
            const p = validate(sub, v, path ? `${path}.${k}` : k, depth + 1);
            if (p)
                return p;
        }
    }
    return undefined;
}
