//! `run`'s flags written after the command, without `--`.
//!
//! vallignus 0.4.2 (click) parsed its flags anywhere on the line:
//! `vallignus run python agent.py --max-runtime 300` capped the run. clap,
//! here, hands everything after the command to the command, so that line
//! would run the agent with no cap and pass it `--max-runtime 300`: a
//! silent downgrade. So before clap sees the arguments:
//!
//! - 0.4.2's own flags after the command are taken as vallignus's, as 0.4.2
//!   did, with a note saying so ([`OLD_FLAGS`]);
//! - any other long flag of `run` after the command is refused: it is not
//!   clear whether it is meant for vallignus or for the command, and a
//!   guess either way can drop a cap or break the command;
//! - everything else after the command is the command's, and from a `--`
//!   on, everything is, the `--` included (`vallignus run git checkout --
//!   FILE` runs `git checkout -- FILE`).

use std::ffi::{OsStr, OsString};

/// The flags of vallignus 0.4.2's `run`; their meaning after the command
/// is kept.
const OLD_FLAGS: [&str; 7] = [
    "--token",
    "--port",
    "--log",
    "--no-session",
    "--max-runtime",
    "--max-output-lines",
    "--max-requests",
];

/// A flag of `run`: its name (`--max-runtime`, `-q`) and whether it takes
/// a value.
pub struct Flag {
    pub name: String,
    pub takes_value: bool,
}

/// `run`'s arguments rearranged for clap.
#[derive(Debug, PartialEq, Eq)]
pub struct Placed {
    /// The whole command line, with 0.4.2's flags moved before the command
    /// and `--` before the command.
    pub args: Vec<OsString>,
    /// The flags that were moved (for the note).
    pub moved: Vec<String>,
}

/// The long flag `arg` names (`--x` or `--x=value`), if it is one of `flags`.
fn known<'a>(arg: &OsStr, flags: &'a [Flag]) -> Option<(&'a Flag, bool)> {
    let arg = arg.to_str()?;
    let (name, inline) = match arg.split_once('=') {
        Some((name, _)) => (name, true),
        None => (arg, false),
    };
    flags.iter().find(|f| f.name == name).map(|f| (f, inline))
}

/// Whether `arg` is a flag (not `-`, which names stdin for many commands).
fn is_flag(arg: &OsStr) -> bool {
    let b = arg.as_encoded_bytes();
    b.len() > 1 && b[0] == b'-'
}

/// Rearrange `args` (the whole command line, `run` at `run_at`), or say
/// which flag after the command is ambiguous.
pub fn place(args: &[OsString], run_at: usize, flags: &[Flag]) -> Result<Placed, String> {
    let (head, rest) = args.split_at(run_at + 1);
    let mut before: Vec<OsString> = head.to_vec();
    // The flags before the command, with their values.
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        if arg == "--" || !is_flag(arg) {
            break;
        }
        before.push(arg.clone());
        if let Some((flag, false)) = known(arg, flags) {
            if flag.takes_value && i + 1 < rest.len() {
                i += 1;
                before.push(rest[i].clone());
            }
        }
        i += 1;
    }
    if i >= rest.len() || rest[i] == "--" {
        // No command, or the command after `--` already: nothing to do.
        return Ok(Placed {
            args: args.to_vec(),
            moved: Vec::new(),
        });
    }
    let mut command = Vec::new();
    let mut moved = Vec::new();
    while i < rest.len() {
        let arg = &rest[i];
        if arg == "--" {
            // The command's own `--` (git checkout -- FILE): kept, and no
            // flag is looked for after it.
            command.extend(rest[i..].iter().cloned());
            break;
        }
        // Only long flags: short ones (`-q`, `-v`) are the command's.
        let long = arg.as_encoded_bytes().starts_with(b"--");
        match known(arg, flags).filter(|_| long) {
            Some((flag, inline)) if OLD_FLAGS.contains(&flag.name.as_str()) => {
                before.push(arg.clone());
                if flag.takes_value && !inline && i + 1 < rest.len() {
                    i += 1;
                    before.push(rest[i].clone());
                }
                moved.push(flag.name.clone());
            }
            Some((flag, _)) => {
                let name = &flag.name;
                return Err(format!(
                    "{name} comes after the command: is it for vallignus or for the command? \
                     Put vallignus's flags first and the command after -- \
                     (vallignus run {name} ... -- CMD ARGS), or, to pass {name} to the command, \
                     start the command after -- (vallignus run -- CMD ... {name} ...)"
                ));
            }
            None => command.push(arg.clone()),
        }
        i += 1;
    }
    before.push("--".into());
    before.extend(command);
    Ok(Placed {
        args: before,
        moved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<Flag> {
        [
            ("--max-runtime", true),
            ("--max-output-bytes", true),
            ("--no-session", false),
            ("--token", true),
            ("--quiet", false),
            ("--user", true),
            ("-q", false),
        ]
        .into_iter()
        .map(|(long, takes_value)| Flag {
            name: long.into(),
            takes_value,
        })
        .collect()
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn placed(args: &[&str]) -> Result<(Vec<OsString>, Vec<String>), String> {
        place(&os(args), 1, &flags()).map(|p| (p.args, p.moved))
    }

    #[test]
    fn old_flags_after_the_command_are_vallignus_s() {
        let (args, moved) = placed(&[
            "vallignus",
            "run",
            "python3",
            "agent.py",
            "--max-runtime",
            "2",
            "-v",
            "--no-session",
            "--token=abc",
        ])
        .unwrap();
        assert_eq!(
            args,
            os(&[
                "vallignus",
                "run",
                "--max-runtime",
                "2",
                "--no-session",
                "--token=abc",
                "--",
                "python3",
                "agent.py",
                "-v"
            ])
        );
        assert_eq!(moved, ["--max-runtime", "--no-session", "--token"]);
    }

    #[test]
    fn flags_before_the_command_keep_their_values() {
        // `nobody` is --user's value, not the command.
        let (args, moved) = placed(&[
            "v",
            "run",
            "--user",
            "nobody",
            "-q",
            "ls",
            "-la",
            "--max-runtime=5",
        ])
        .unwrap();
        assert_eq!(
            args,
            os(&[
                "v",
                "run",
                "--user",
                "nobody",
                "-q",
                "--max-runtime=5",
                "--",
                "ls",
                "-la"
            ])
        );
        assert_eq!(moved, ["--max-runtime"]);
    }

    #[test]
    fn after_a_double_dash_everything_is_the_command_s() {
        let line = ["v", "run", "--", "agent", "--max-runtime", "2", "--quiet"];
        let (args, moved) = placed(&line).unwrap();
        assert_eq!(args, os(&line));
        assert!(moved.is_empty());
        // A `--` after the command is the command's (git checkout -- F),
        // and no flag is taken after it.
        let (args, _) =
            placed(&["v", "run", "agent", "--max-runtime", "2", "--", "--quiet"]).unwrap();
        assert_eq!(
            args,
            os(&[
                "v",
                "run",
                "--max-runtime",
                "2",
                "--",
                "agent",
                "--",
                "--quiet"
            ])
        );
        let (args, moved) = placed(&["v", "run", "git", "checkout", "--", "f"]).unwrap();
        assert_eq!(args, os(&["v", "run", "--", "git", "checkout", "--", "f"]));
        assert!(moved.is_empty());
    }

    #[test]
    fn short_flags_after_the_command_are_the_command_s() {
        let (args, moved) = placed(&["v", "run", "pip", "install", "-q", "x"]).unwrap();
        assert_eq!(args, os(&["v", "run", "--", "pip", "install", "-q", "x"]));
        assert!(moved.is_empty());
        // Before the command, -q is vallignus's.
        let (args, _) = placed(&["v", "run", "-q", "ls"]).unwrap();
        assert_eq!(args, os(&["v", "run", "-q", "--", "ls"]));
    }

    #[test]
    fn newer_flags_after_the_command_are_refused_by_name() {
        for flag in ["--max-output-bytes", "--quiet", "--user=bob"] {
            let err = placed(&["v", "run", "agent", flag, "x"]).unwrap_err();
            let name = flag.split('=').next().unwrap();
            assert!(
                err.starts_with(&format!("{name} comes after the command")),
                "{err}"
            );
        }
    }

    #[test]
    fn lines_without_a_command_or_flags_after_it_are_unchanged() {
        for line in [
            &["v", "run"][..],
            &["v", "run", "--max-runtime", "2"],
            &["v", "run", "ls", "-la", "-", "--maxruntime"],
        ] {
            let p = place(&os(line), 1, &flags()).unwrap();
            let want = if line.len() > 2 && line[2] == "ls" {
                os(&["v", "run", "--", "ls", "-la", "-", "--maxruntime"])
            } else {
                os(line)
            };
            assert_eq!(p.args, want, "{line:?}");
            assert!(p.moved.is_empty());
        }
    }
}
