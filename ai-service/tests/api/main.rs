//! ai-service over real gRPC, with a real chat-service and an
//! OpenAI-compatible model server started by each test.

mod helpers;
mod openai;
mod replies;
mod requests;
mod resilience;
