//! The notes as files: the checkpoint a long run resumes from (plain JSON, checked against the
//! input and the settings) and the timeline `--notes-out` writes (Markdown or JSON).

use super::{Note, Progress};
use crate::error::{Error, Result};

impl Progress {
    pub fn to_json(
        &self,
        input_fingerprint: &str,
        settings: &serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "format": "famstream-notes-1",
            "input": input_fingerprint,
            "settings": settings,
            "done": self.done,
            "merges": self.merges,
            "written_tokens": self.written_tokens,
            "notes": self.notes.iter().map(note_json).collect::<Vec<_>>(),
        })
    }

    /// A checkpoint made by [`Progress::to_json`] for the same input and settings.
    pub fn from_json(
        v: &serde_json::Value,
        input_fingerprint: &str,
        settings: &serde_json::Value,
    ) -> Result<Progress> {
        let bad = |what: &str| Error::Invalid(format!("notes checkpoint: {what}"));
        if v["format"] != "famstream-notes-1" {
            return Err(bad("not a famstream notes checkpoint"));
        }
        if v["input"] != input_fingerprint {
            return Err(bad(
                "it was made for another input (delete it to start over)",
            ));
        }
        if &v["settings"] != settings {
            return Err(bad(&format!(
                "it was made with other settings {} (now {settings}; delete it to start over)",
                v["settings"]
            )));
        }
        let num = |k: &str| v[k].as_u64().map(|x| x as usize).ok_or_else(|| bad(k));
        let mut notes = Vec::new();
        for n in v["notes"].as_array().ok_or_else(|| bad("notes"))? {
            notes.push(Note {
                start_token: n["start_token"]
                    .as_u64()
                    .ok_or_else(|| bad("start_token"))? as usize,
                start_time: n["start_time"].as_str().map(str::to_string),
                chunks: n["chunks"].as_u64().ok_or_else(|| bad("chunks"))? as usize,
                text: n["text"].as_str().ok_or_else(|| bad("text"))?.to_string(),
                n_tokens: n["tokens"].as_u64().ok_or_else(|| bad("tokens"))? as usize,
            });
        }
        Ok(Progress {
            done: num("done")?,
            merges: num("merges")?,
            written_tokens: num("written_tokens")?,
            notes,
        })
    }
}

fn note_json(n: &Note) -> serde_json::Value {
    serde_json::json!({
        "start_token": n.start_token, "start_time": n.start_time, "chunks": n.chunks,
        "tokens": n.n_tokens, "text": n.text,
    })
}

/// The notes as a Markdown timeline.
pub fn timeline_markdown(notes: &[Note]) -> String {
    let mut s = String::from("# Notes\n\n");
    for n in notes {
        let at = match &n.start_time {
            Some(t) => format!("{t} (token {})", n.start_token),
            None => format!("token {}", n.start_token),
        };
        s.push_str(&format!("## {at}\n\n{}\n\n", n.text.trim()));
    }
    s
}

/// The notes as JSON (the timeline).
pub fn timeline_json(notes: &[Note]) -> serde_json::Value {
    serde_json::json!({ "notes": notes.iter().map(note_json).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_refuse_another_input() {
        let p = Progress {
            done: 3,
            merges: 1,
            written_tokens: 200,
            notes: vec![Note {
                start_token: 0,
                start_time: Some("00:00:01,000".into()),
                chunks: 2,
                text: "Alice chose Lisbon.".into(),
                n_tokens: 5,
            }],
        };
        let s = serde_json::json!({"note_tokens": 96});
        let j = p.to_json("abc", &s);
        assert_eq!(Progress::from_json(&j, "abc", &s).unwrap(), p);
        let e = Progress::from_json(&j, "abd", &s).unwrap_err().to_string();
        assert!(e.contains("another input"), "{e}");
        let e = Progress::from_json(&j, "abc", &serde_json::json!({"note_tokens": 8}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("other settings"), "{e}");
    }
}
