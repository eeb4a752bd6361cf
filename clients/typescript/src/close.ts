// What to do after each close code: the "reconnect" column of the close-code
// table in docs/protocol.md (a test checks the two agree).

export type ClosePolicy = "reconnect" | "slow" | "new-token" | "stop";

/** Close codes with a policy other than a plain reconnect. */
export const CLOSE_POLICIES: Readonly<Record<number, ClosePolicy>> = {
  1003: "stop", // binary frames are not supported
  1007: "stop", // invalid UTF-8: sending it again would fail again
  4002: "stop", // invalid token
  4003: "new-token", // token expired or revoked
  4008: "slow", // slow consumer
  4009: "slow", // too many connections
  4029: "slow", // too many rate-limit violations
};

/** The policy for a close code; unknown codes (and network drops) reconnect. */
export function closePolicy(code: number): ClosePolicy {
  return CLOSE_POLICIES[code] ?? "reconnect";
}
