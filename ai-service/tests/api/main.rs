//! ai-service over real gRPC, with a real chat-service and an
//! OpenAI-compatible model server started by each test; `replicas` runs two
//! ai-services sharing Redis.

mod helpers;
mod openai;
mod replicas;
mod replies;
mod requests;
mod resilience;
