//! The built-in offline development provider: a deterministic stand-in that
//! echoes the question (the last user message). It is not a language model and says so in every reply.

use std::time::Duration;

use async_trait::async_trait;

use super::{ChunkStream, Prompt, Provider, ProviderError};

/// How much of the prompt the reply echoes, in characters, so the reply stays
/// well under chat-service's message size limit.
const ECHO_MAX_CHARS: usize = 1000;

/// A development stand-in for a model provider. **It is NOT a language
/// model**: it generates nothing, it only reflects the prompt back
/// deterministically (its word and character counts and its words), and every
/// reply starts with [`OfflineProvider::LABEL`] so nobody mistakes it for an
/// answer. It streams the reply in word-sized chunks with a fixed pause
/// between them, so clients see the same `ai.delta` flow as with a real
/// provider. It needs no network and no credentials, which makes it the
/// default of the one-process development mode.
#[derive(Debug, Clone)]
pub struct OfflineProvider {
    /// Pause between two chunks, to look like streaming.
    chunk_delay: Duration,
}

impl OfflineProvider {
    /// The opening of every reply.
    pub const LABEL: &'static str = "[offline dev provider — not a language model]";

    pub fn new(chunk_delay: Duration) -> Self {
        Self { chunk_delay }
    }

    /// The complete reply to `prompt`; the same prompt always gets the same reply.
    pub fn reply(prompt: &str) -> String {
        let words: Vec<&str> = prompt.split_whitespace().collect();
        let chars = prompt.chars().count();
        format!(
            "{} You wrote {} {} ({} {}): {} — this stand-in only echoes prompts; configure a model provider for real answers.",
            Self::LABEL,
            words.len(),
            plural(words.len(), "word", "words"),
            chars,
            plural(chars, "character", "characters"),
            echo(&words),
        )
    }

    /// The reply cut into the chunks it is streamed as: each word with the
    /// whitespace after it, so the chunks concatenate to the reply.
    pub fn chunks(prompt: &str) -> Vec<String> {
        word_chunks(&Self::reply(prompt))
    }
}

#[async_trait]
impl Provider for OfflineProvider {
    fn name(&self) -> &'static str {
        "offline"
    }

    async fn generate(&self, prompt: &Prompt) -> Result<ChunkStream, ProviderError> {
        let delay = self.chunk_delay;
        let chunks = Self::chunks(prompt.question()).into_iter();
        let stream =
            futures::stream::unfold((chunks, true), move |(mut chunks, first)| async move {
                let chunk = chunks.next()?;
                if !first {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok(chunk), (chunks, false)))
            });
        Ok(Box::pin(stream))
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// The prompt's words, single-spaced, cut at [`ECHO_MAX_CHARS`] with `…`.
fn echo(words: &[&str]) -> String {
    let mut out = String::new();
    let mut used = 0;
    for (i, word) in words.iter().enumerate() {
        let separator = usize::from(i > 0);
        let len = word.chars().count();
        if used + separator + len > ECHO_MAX_CHARS {
            if i == 0 {
                out.extend(word.chars().take(ECHO_MAX_CHARS));
            }
            out.push_str(" …");
            return out;
        }
        if separator == 1 {
            out.push(' ');
        }
        out.push_str(word);
        used += separator + len;
    }
    out
}

/// Splits `text` after each run of whitespace: `"a b  c"` → `["a ", "b  ", "c"]`.
fn word_chunks(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut after_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            after_space = true;
        } else if after_space {
            chunks.push(text[start..i].to_string());
            start = i;
            after_space = false;
        }
    }
    if start < text.len() {
        chunks.push(text[start..].to_string());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::time::Instant;

    use super::*;
    use crate::provider::{Role, Turn};

    fn prompt(text: &str) -> Prompt {
        Prompt {
            messages: vec![
                Turn::new(Role::System, None, "be brief"),
                Turn::new(Role::User, Some("Ann".into()), text),
                Turn::new(Role::Assistant, None, "an earlier answer"),
            ],
            model: "offline".into(),
        }
    }

    #[test]
    fn the_reply_is_labelled_and_reflects_the_prompt() {
        let reply = OfflineProvider::reply("what is  parley?");
        assert!(reply.starts_with(OfflineProvider::LABEL), "{reply}");
        assert!(reply.contains("not a language model"));
        assert!(
            reply.contains("3 words (16 characters): what is parley?"),
            "{reply}"
        );
        assert_eq!(
            reply,
            OfflineProvider::reply("what is  parley?"),
            "deterministic"
        );
        assert!(OfflineProvider::reply("hi").contains("1 word (2 characters): hi"));
    }

    #[test]
    fn long_prompts_are_echoed_only_in_part() {
        let long = "word ".repeat(800);
        let reply = OfflineProvider::reply(&long);
        assert!(reply.contains("800 words"));
        assert!(reply.contains(" …"));
        assert!(
            reply.chars().count() < ECHO_MAX_CHARS + 300,
            "{}",
            reply.chars().count()
        );
        let one_huge_word = "x".repeat(4000);
        assert!(OfflineProvider::reply(&one_huge_word).chars().count() < ECHO_MAX_CHARS + 300);
    }

    #[test]
    fn chunks_are_words_with_their_trailing_whitespace() {
        assert_eq!(word_chunks("a b  c"), ["a ", "b  ", "c"]);
        assert_eq!(word_chunks("a\n\nb "), ["a\n\n", "b "]);
        assert!(word_chunks("").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn streams_word_chunks_with_the_configured_pause() {
        let delay = Duration::from_millis(40);
        let provider = OfflineProvider::new(delay);
        let started = Instant::now();
        let mut stream = provider
            .generate(&prompt("tell me a story"))
            .await
            .expect("stream");
        let mut received = Vec::new();
        while let Some(chunk) = stream.next().await {
            received.push((chunk.expect("chunk"), started.elapsed()));
        }

        let expected = OfflineProvider::chunks("tell me a story");
        assert!(expected.len() > 5);
        let texts: Vec<&str> = received.iter().map(|(text, _)| text.as_str()).collect();
        assert_eq!(texts, expected);
        assert_eq!(texts.concat(), OfflineProvider::reply("tell me a story"));
        assert!(
            texts[0].starts_with('['),
            "the label comes first: {texts:?}"
        );
        for (i, (_, at)) in received.iter().enumerate() {
            assert_eq!(*at, delay * i as u32, "chunk {i} arrives after {i} pauses");
        }
    }
}
