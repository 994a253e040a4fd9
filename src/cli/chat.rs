//! `famstream chat`: interactive chat in the terminal (type /exit to leave, /reset to start over).

use super::common::*;
use clap::Args;
use famstream::chat::Message;
use famstream::state::FamState;
use famstream::state::Logits;
use famstream::{Error, Result};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Keep the conversation on disk under this name: resumed at start, saved after every
    /// turn (constant size, atomic writes).
    #[arg(long)]
    pub session: Option<String>,
    /// Where sessions live (default: $XDG_DATA_HOME/famstream/sessions or
    /// ~/.local/share/famstream/sessions).
    #[arg(long = "sessions-dir")]
    pub sessions_dir: Option<PathBuf>,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let ChatArgs {
        model,
        system,
        session,
        sessions_dir,
        sample,
        memory,
        ..
    } = args;
    memory.refuse_unused("chat", true, Some("use --session NAME"))?;
    let mut opts = sample.options()?;
    let rt = model.load()?;
    let mut eng = rt.engine()?;
    let session_path = session
        .as_deref()
        .map(|n| session_file(n, sessions_dir.as_deref()))
        .transpose()?;
    let mut first = true;
    let mut turns = 0u64;
    // The system message opens the conversation with the first user turn (templates
    // may fold it into that turn).
    let opening: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
    let mut stream = match &session_path {
        Some(p) if p.exists() => {
            if memory.load_state.is_some() {
                return Err(Error::Invalid(format!(
                    "session {} exists: it is resumed, so --load-state would be ignored",
                    p.display()
                )));
            }
            let expected = if memory.any_setting() {
                Some(memory.settings(&rt)?)
            } else {
                None
            };
            let (st, extra) = FamState::load(p, &rt.model, eng.backend(), expected.as_ref())?;
            memory.same_start(&st, &p.display().to_string())?;
            turns = extra["turns"].as_u64().unwrap_or(0);
            first = false;
            eprintln!("(session resumed: {turns} turns, {} tokens)", st.n_past());
            st
        }
        _ => memory.state(&rt, &eng, model.ctx(&rt))?,
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        print!("> ");
        let _ = out.flush();
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::io("<stdin>", "read", e))?
            == 0
        {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                stream.reset();
                turns = 0;
                first = true;
                println!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        let user = Message::new("user", line);
        let mut turn = if first {
            let mut o = opening.clone();
            o.push(user);
            rt.chat.render_opening(&o)
        } else {
            rt.chat.render_turn(&user, false)
        };
        turn.push_str(rt.chat.generation_prompt());
        let tokens = rt.encode_chat(&turn, first);
        first = false;
        // A per-turn seed keeps sampled sessions reproducible across processes.
        opts.sampler.seed = sample.seed.wrapping_add(turns);
        let stats = rt.generate(&mut eng, &mut stream, &tokens, &opts, |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
            true
        })?;
        println!();
        eprintln!(
            "[{} tokens, {:.1} tok/s]",
            stats.generated_tokens,
            stats.generate_tps()
        );
        // Close the assistant turn in the stream.
        let end = rt
            .tokenizer
            .encode(rt.chat.end_of_assistant_turn(), false, true);
        stream.feed(&mut eng, &end, Logits::None)?;
        turns += 1;
        if let Some(p) = &session_path {
            stream.save(p, &rt.model, serde_json::json!({ "turns": turns }))?;
        }
    }
    Ok(())
}
