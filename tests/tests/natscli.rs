//! The clients the docs show, run as the docs show them, against a broker on `config/nats.conf`
//! with the services running under their identities (docs/clients.md):
//!
//! - every `nats` command of README.md and docs/*.md, with the real nats CLI v0.5.0
//!   (`scripts/ensure-natscli.sh` builds it with Go), through the contexts
//!   `scripts/nats-contexts.sh` writes for `scripts/run.sh`, each checked on what it prints;
//! - the Python snippet of docs/clients.md, taken from the doc, with nats-py
//!   (`scripts/ensure-natspy.sh`);
//! - its Rust snippet, which is [`fx_clients`] below, word for word.
//!
//! Without Go (or Python) the CLI (or Python) test says so and runs nothing; the test that the
//! docs give no command this file does not run needs neither.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use common::{assert_no_violation, balance, System, SAGA_DEADLINE_MS};
use events::{EventKind, SagaId};

/// The nats CLI version the docs were tested with (scripts/ensure-natscli.sh pins it).
const CLI_VERSION: &str = "v0.5.0";

/// How long one CLI command may take.
const COMMAND_DEADLINE_MS: u64 = 20_000;

/// The saga of the hand-written request in README.md and docs/clients.md.
const DOC_SAGA: &str = "0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11";

// --- The docs ------------------------------------------------------------------------------

/// README.md and every docs/*.md, as (path, text).
fn docs() -> Vec<(String, String)> {
    let root = testkit::workspace_root();
    let mut paths = vec![root.join("README.md")];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    in_docs.sort();
    paths.extend(in_docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.strip_prefix(&root).unwrap().display().to_string(), text)
        })
        .collect()
}

/// The fenced blocks of a markdown text with their language: (language, body).
fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| l.trim_start() != "```")
                .collect();
            out.push((lang.trim().to_owned(), body.join("\n")));
        }
    }
    out
}

/// A shell line without its trailing `# comment` (a `#` after a blank, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut prev_blank) = (false, false, true);
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_blank => return line[..i].trim_end(),
            _ => {}
        }
        prev_blank = c.is_whitespace();
    }
    line.trim_end()
}

/// Every `nats` command in the sh blocks of the docs, continuation lines joined, without
/// comments, with the file it is in.
fn documented_commands() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, text) in docs() {
        for (lang, body) in fenced_blocks(&text) {
            if !matches!(lang.as_str(), "sh" | "bash" | "shell" | "console") {
                continue;
            }
            let mut joined = String::new();
            for line in body.lines() {
                let line = strip_comment(line);
                match line.strip_suffix('\\') {
                    Some(part) => joined.push_str(part),
                    None => {
                        joined.push_str(line);
                        let cmd = joined.split_whitespace().collect::<Vec<_>>().join(" ");
                        if cmd.starts_with("nats ") {
                            out.push((path.clone(), cmd));
                        }
                        joined.clear();
                    }
                }
            }
        }
    }
    out
}

/// The inline code spans of the docs' prose that name a `nats` command, e.g. `nats micro`.
fn inline_commands() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, text) in docs() {
        let mut fenced = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                continue;
            }
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && span.starts_with("nats ") {
                    out.push((path.clone(), span.to_owned()));
                }
            }
        }
    }
    out
}

/// A command without its `--context NAME` (what a prose mention leaves out).
fn without_context(cmd: &str) -> String {
    let mut words = Vec::new();
    let mut it = cmd.split(' ');
    while let Some(w) = it.next() {
        if w == "--context" {
            it.next();
        } else {
            words.push(w);
        }
    }
    words.join(" ")
}

// --- What each documented command must print -------------------------------------------------

/// How a documented command runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// To its end.
    Once,
    /// In a pseudo-terminal (`nats stream view` pages interactively and refuses to run without
    /// one), to its end.
    Terminal,
    /// Until it has printed what it must (a live subscription), started before the publish.
    Live,
    /// The hand-written exchange request: run once, then the saga must complete.
    Publish,
}

/// A documented command, how it runs and what it must print.
struct Expect {
    cmd: String,
    run: Run,
    prints: Vec<String>,
}

fn expect(cmd: &str, run: Run, prints: &[&str]) -> Expect {
    Expect {
        cmd: cmd.to_owned(),
        run,
        prints: prints.iter().map(|s| s.to_string()).collect(),
    }
}

/// Every `nats` command the docs give, in the order the test runs them: the subscriptions,
/// the request, then what an operator looks at once the saga has completed (the stream holds
/// the deposit and the saga's five events by then).
fn expectations() -> Vec<Expect> {
    let request = format!(
        "nats --context fx-client pub --jetstream fx.exchange.requested.alice \
         '{{\"saga_id\":\"{DOC_SAGA}\",\"user_id\":\"alice\",\"krw_amount\":\"1500000\",\"min_usd_amount\":\"1000.00\"}}' \
         -H Nats-Msg-Id:{DOC_SAGA}"
    );
    let saga_events = [
        "Received on \"fx.exchange.requested.alice\"",
        "Received on \"fx.krw.held.alice\"",
        "Received on \"fx.trade.filled.alice\"",
        "Received on \"fx.usd.credited.alice\"",
        "Received on \"fx.krw.committed.alice\"",
        "Nats-Msg-Id: 0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11:krw.committed",
        "\"usd_amount\":\"1071.42\"",
    ];
    let msg_id = format!("Nats-Msg-Id: {DOC_SAGA}");
    vec![
        expect("nats --context fx-client sub 'fx.*.*.alice'", Run::Live, &saga_events),
        expect("nats --context fx-admin sub 'fx.*.*.alice'", Run::Live, &saga_events),
        expect(
            &request,
            Run::Publish,
            &[
                "Published 118 bytes to \"fx.exchange.requested.alice\"",
                "Stored in Stream: FX Sequence: 2",
            ],
        ),
        expect(
            "nats --context fx-admin stream ls",
            Run::Once,
            &[
                "│ FX     │ Every domain event of the FX exchange saga.",
                "│ FX_DLQ │ Messages refused by an FX service",
            ],
        ),
        expect(
            "nats --server \"$NATS_URL\" --user admin --password \"$FX_NATS_PASSWORD_ADMIN\" \
             --inbox-prefix _INBOX_admin stream ls",
            Run::Once,
            &["│ FX     │ Every domain event", "│ FX_DLQ │ Messages refused"],
        ),
        expect(
            "nats --context fx-admin stream info FX",
            Run::Once,
            &[
                "Information for Stream FX",
                "Subjects: fx.>",
                "Messages: 6",
                "Last Sequence: 6",
                "Active Consumers: 3",
            ],
        ),
        expect(
            "nats --context fx-admin stream view FX",
            Run::Terminal,
            &[
                "[1] Subject: fx.krw.deposited.alice",
                "[2] Subject: fx.exchange.requested.alice",
                &msg_id,
                "{\"saga_id\":\"0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11\",\"user_id\":\"alice\",\"krw_amount\":\"1500000\",\"min_usd_amount\":\"1000.00\"}",
                "[6] Subject: fx.krw.committed.alice",
                "Fx-Causation-Id: 0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11:usd.credited",
                "Reached apparent end of data",
            ],
        ),
        expect(
            "nats --context fx-admin stream view FX --subject 'fx.*.*.alice'",
            Run::Terminal,
            &[
                "[1] Subject: fx.krw.deposited.alice",
                "[6] Subject: fx.krw.committed.alice",
                "Reached apparent end of data",
            ],
        ),
        expect(
            "nats --context fx-admin stream info FX_DLQ",
            Run::Once,
            &["Information for Stream FX_DLQ", "Messages: 0"],
        ),
        expect(
            "nats --context fx-admin consumer report FX",
            Run::Once,
            &[
                "Consumer report for FX with 3 consumers",
                "│ fx-krw   │ Pull │ Explicit",
                "│ fx-trade │ Pull │ Explicit",
                "│ fx-usd   │ Pull │ Explicit",
            ],
        ),
        expect(
            "nats --context fx-admin micro ls",
            Run::Once,
            &[
                "All Services",
                "│ fx-krw   │",
                "fx-krw admin: deposit, balance, audit",
                "│ fx-trade │",
                "fx-trade admin: audit",
                "│ fx-usd   │",
                "fx-usd admin: deposit, balance, freeze, unfreeze, audit",
            ],
        ),
        expect(
            "nats --context fx-admin micro info fx-krw",
            Run::Once,
            &[
                "Service: fx-krw",
                "Subject: fxadmin.krw.deposit",
                "Subject: fxadmin.krw.balance",
                "Subject: fxadmin.krw.audit",
            ],
        ),
        expect(
            "nats --context fx-admin micro stats fx-krw",
            Run::Once,
            &[
                "fx-krw Service Statistics",
                "fxadmin-krw-deposit",
                "fxadmin-krw-balance",
                "fxadmin-krw-audit",
            ],
        ),
        expect(
            "nats --context fx-admin req fxadmin.krw.balance '{\"user_id\":\"alice\"}'",
            Run::Once,
            &[
                "Sending request on \"fxadmin.krw.balance\"",
                "{\"exists\":true,\"krw_available\":\"3500000\",\"krw_held\":\"0\",\"user_id\":\"alice\"}",
            ],
        ),
    ]
}

#[test]
fn every_nats_command_of_the_docs_is_run_by_the_cli_test() {
    let documented: BTreeSet<String> = documented_commands().into_iter().map(|c| c.1).collect();
    let tested: BTreeSet<String> = expectations()
        .into_iter()
        .map(|e| e.cmd.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let untested: Vec<&String> = documented.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "the docs give nats commands this test does not run: {untested:#?}"
    );
    let undocumented: Vec<&String> = tested.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "this test runs nats commands the docs no longer give: {undocumented:#?}"
    );
    // Every command says as whom it runs: a context of scripts/run.sh, or a user.
    for cmd in &documented {
        assert!(
            cmd.starts_with("nats --context fx-") || cmd.contains(" --user "),
            "{cmd}: names no identity"
        );
    }
    // A command the prose names (`nats micro`, `nats consumer report FX`...) is one of them.
    let bare: Vec<String> = documented.iter().map(|c| without_context(c)).collect();
    for (path, span) in inline_commands() {
        assert!(
            bare.iter().any(|c| c.starts_with(&span)),
            "{path} names `{span}`, which is no command of the docs' sh blocks"
        );
    }
}

// --- Running the nats CLI ----------------------------------------------------------------------

/// A command run through bash, its stdout and stderr gathered into one text.
struct Proc {
    cmd: String,
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut command: Command, cmd: &str) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
        let out = Arc::new(Mutex::new(String::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        let mut readers = Vec::new();
        for mut pipe in [stdout, stderr] {
            let out = out.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                    out.lock().unwrap().push_str(&text);
                }
            }));
        }
        Proc {
            cmd: cmd.to_owned(),
            child,
            out,
            readers,
        }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits for the command to end; its status and everything it printed.
    async fn finish(mut self) -> (ExitStatus, String) {
        let cmd = self.cmd.clone();
        let status = testkit::wait_for(&format!("`{cmd}` to end"), COMMAND_DEADLINE_MS, || {
            let s = self.child.try_wait().unwrap();
            async move { s }
        })
        .await;
        // Both pipes are at their end once the process and its children are gone.
        let readers = &self.readers;
        testkit::wait_for(&format!("the output of `{cmd}`"), 5_000, || {
            let done = readers.iter().all(|r| r.is_finished());
            async move { done.then_some(()) }
        })
        .await;
        (status, self.text())
    }

    /// Waits until the command has printed every one of `needles`.
    async fn wait_prints(&self, needles: &[String]) {
        let cmd = &self.cmd;
        let found = testkit::try_wait_for(SAGA_DEADLINE_MS, || {
            let text = self.text();
            async move { needles.iter().all(|n| text.contains(n)).then_some(()) }
        })
        .await;
        if found.is_none() {
            let text = self.text();
            let missing: Vec<&String> = needles.iter().filter(|n| !text.contains(*n)).collect();
            panic!("`{cmd}` did not print {missing:#?}; it printed:\n{text}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the commands run: the CLI on PATH, the contexts in their own config directory, the
/// broker's URL and passwords in the environment (for the command without a context).
struct Shell {
    cli: PathBuf,
    config: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Shell {
    fn command(&self, cmd: &str, run: Run) -> Proc {
        let mut c = match run {
            Run::Terminal => {
                let mut c = Command::new("script");
                c.args(["-qec", cmd, "/dev/null"]);
                c
            }
            _ => {
                let mut c = Command::new("bash");
                c.args(["-c", cmd]);
                c
            }
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.cli.parent().unwrap().to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(dirs).unwrap())
            .env("XDG_CONFIG_HOME", self.config.path())
            .env("HOME", self.config.path());
        for var in [
            "NATS_URL",
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_CREDS",
            "NATS_CONTEXT",
        ] {
            c.env_remove(var);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(c, cmd)
    }
}

/// The nats CLI this test runs, or why there is none.
fn nats_cli() -> Result<PathBuf, String> {
    let candidate = match std::env::var_os("NATS_CLI_BIN") {
        Some(p) => PathBuf::from(p),
        None => testkit::workspace_root().join(".tools/bin/nats"),
    };
    if !candidate.exists() {
        let go = Command::new("go").arg("version").output().is_ok();
        return Err(if go {
            format!("no nats CLI at {}: run scripts/ensure-natscli.sh (it builds {CLI_VERSION} with Go; scripts/test.sh does)", candidate.display())
        } else {
            format!("no nats CLI at {}, and Go is not installed to build it (scripts/ensure-natscli.sh)", candidate.display())
        });
    }
    let version = Command::new(&candidate).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert_eq!(
        version,
        CLI_VERSION,
        "{} is not the nats CLI the docs name",
        candidate.display()
    );
    Ok(candidate)
}

/// The CLI's subscriptions on `subject` the broker holds.
fn subscriptions_on(sys: &System, subject: &str) -> usize {
    let port = match &sys.nats {
        common::Broker::Single(s) => s.monitor_port(),
        common::Broker::Cluster(_) => unreachable!(),
    };
    let Some(connz) = testkit::cluster::monitor_json(port, "/connz?subs=1") else {
        return 0;
    };
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["lang"] == "go")
        .flat_map(|c| {
            c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|s| s == subject)
        .count()
}

#[tokio::test]
async fn every_nats_command_of_the_docs_works_as_its_documented_identity() {
    let cli = match nats_cli() {
        Ok(cli) => cli,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let sys = System::start_secured().await;
    let ids = sys.identities.clone().unwrap();
    let url = sys.nats.url();
    sys.deposit_krw("alice", "5000000").await;

    // The contexts, written as scripts/run.sh writes them.
    let mut env: Vec<(String, String)> = vec![("NATS_URL".into(), url.clone())];
    for who in common::IDENTITIES {
        env.push((
            common::Identities::env_var(who),
            ids.password(who).to_owned(),
        ));
    }
    let shell = Shell {
        cli,
        config: tempfile::tempdir().unwrap(),
        env,
    };
    let script = testkit::workspace_root().join("scripts/nats-contexts.sh");
    let (status, text) = shell
        .command(&script.display().to_string(), Run::Once)
        .finish()
        .await;
    assert!(status.success(), "{text}");
    for who in common::IDENTITIES {
        let file = shell
            .config
            .path()
            .join(format!("nats/context/fx-{who}.json"));
        let ctx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(ctx["user"], who);
        assert_eq!(ctx["inbox_prefix"], format!("_INBOX_{who}"));
        assert_eq!(ctx["url"], url.as_str());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} holds a password", file.display());
    }

    let mut live = Vec::new();
    for e in expectations() {
        match e.run {
            Run::Live => {
                live.push((shell.command(&e.cmd, Run::Live), e.prints));
                let subject = "fx.*.*.alice";
                let n = live.len();
                testkit::wait_for(
                    &format!("{n} CLI subscriptions on {subject}"),
                    COMMAND_DEADLINE_MS,
                    || {
                        let held = subscriptions_on(&sys, subject);
                        async move { (held == n).then_some(()) }
                    },
                )
                .await;
            }
            Run::Publish => {
                let (status, text) = shell.command(&e.cmd, e.run).finish().await;
                assert!(status.success(), "`{}` failed:\n{text}", e.cmd);
                assert_prints(&e, &text);
                // The hand-written request is a real one: the saga completes.
                let saga = SagaId::parse(DOC_SAGA).unwrap();
                sys.wait_for_event(saga, EventKind::KrwCommitted).await;
                assert_eq!(
                    sys.balance("alice").await,
                    balance("alice", "3500000", "0", "1071.42")
                );
                for (sub, prints) in &live {
                    sub.wait_prints(prints).await;
                }
            }
            Run::Once | Run::Terminal => {
                let (status, text) = shell.command(&e.cmd, e.run).finish().await;
                assert!(status.success(), "`{}` failed:\n{text}", e.cmd);
                assert_prints(&e, &text);
            }
        }
    }
    drop(live);
    assert_no_violation(&sys);
}

fn assert_prints(e: &Expect, text: &str) {
    for needle in &e.prints {
        assert!(
            text.contains(needle.as_str()),
            "`{}` did not print {needle:?}; it printed:\n{text}",
            e.cmd
        );
    }
}

// --- The Python and Rust snippets of docs/clients.md ---------------------------------------------

/// The one block of `lang` in docs/clients.md.
fn clients_doc_block(lang: &str) -> String {
    let text = std::fs::read_to_string(testkit::workspace_root().join("docs/clients.md")).unwrap();
    let blocks: Vec<String> = fenced_blocks(&text)
        .into_iter()
        .filter(|(l, _)| l == lang)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(blocks.len(), 1, "docs/clients.md has one {lang} snippet");
    blocks.into_iter().next().unwrap()
}

/// What a snippet printed, checked against the broker and the services: its request's PubAck,
/// the stream read back (the deposit, then the request at the PubAck's sequence), and alice's
/// balance while the saga runs; then the saga completes.
async fn check_snippet_output(sys: &System, who: &str, out: &str) {
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    let rest = first
        .strip_prefix("requested saga ")
        .unwrap_or_else(|| panic!("{who} printed no PubAck:\n{out}"));
    let (saga, ack) = rest.split_once(": ").unwrap();
    assert_eq!(ack, "stream FX, sequence 2", "{who}:\n{out}");
    let saga = SagaId::parse(saga).unwrap();
    let listed: Vec<&str> = lines.clone().collect();
    assert!(
        listed[0].starts_with("1 fx.krw.deposited.alice {"),
        "{who}:\n{out}"
    );
    assert_eq!(
        listed[1],
        format!(
            "2 fx.exchange.requested.alice {{\"krw_amount\":\"100000\",\"saga_id\":\"{saga}\",\"user_id\":\"alice\"}}"
        )
        .as_str(),
        "{who}:\n{out}"
    );
    let reply = listed.last().unwrap().strip_prefix("balance: ").unwrap();
    let b: serde_json::Value = serde_json::from_str(reply).unwrap();
    let krw = |k: &str| b[k].as_str().unwrap().parse::<u64>().unwrap();
    // Asked while the saga runs: before the hold, during it, or after the commit.
    let seen = (krw("krw_available"), krw("krw_held"));
    assert!(
        [(5_000_000, 0), (4_900_000, 100_000), (4_900_000, 0)].contains(&seen),
        "{who}: balance {b}"
    );
    sys.wait_for_event(saga, EventKind::KrwCommitted).await;
    assert_eq!(
        sys.balance("alice").await,
        balance("alice", "4900000", "0", "71.42")
    );
}

/// The python with nats-py this test runs, or why there is none.
fn nats_py() -> Result<PathBuf, String> {
    let python = match std::env::var_os("NATS_PY_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => testkit::workspace_root().join(".tools/nats-py/bin/python"),
    };
    let imports = Command::new(&python)
        .args(["-c", "import nats"])
        .output()
        .is_ok_and(|o| o.status.success());
    if imports {
        Ok(python)
    } else {
        Err(format!(
            "no python with nats-py at {}: run scripts/ensure-natspy.sh (scripts/test.sh does; it needs python3 with venv and pip)",
            python.display()
        ))
    }
}

#[tokio::test]
async fn the_python_snippet_of_the_docs_publishes_reads_and_asks() {
    let python = match nats_py() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let sys = System::start_secured().await;
    let ids = sys.identities.clone().unwrap();
    sys.deposit_krw("alice", "5000000").await;
    let dir = tempfile::tempdir().unwrap();
    let snippet = dir.path().join("clients.py");
    std::fs::write(&snippet, clients_doc_block("python")).unwrap();
    let mut c = Command::new(&python);
    c.arg(&snippet)
        .env("NATS_URL", sys.nats.url())
        .env("FX_NATS_PASSWORD_CLIENT", ids.password("client"))
        .env("FX_NATS_PASSWORD_ADMIN", ids.password("admin"));
    let (status, out) = Proc::spawn(c, &snippet.display().to_string())
        .finish()
        .await;
    assert!(status.success(), "the Python snippet failed:\n{out}");
    // Python's json.dumps keeps the dict's order; the check compares with keys sorted.
    check_snippet_output(&sys, "the Python snippet", &sorted_json_bodies(&out)).await;
    assert_no_violation(&sys);
}

/// The same output with each line's JSON body re-serialized with sorted keys.
fn sorted_json_bodies(out: &str) -> String {
    out.lines()
        .map(|l| match l.find('{') {
            Some(i) if !l.starts_with("balance: ") => {
                match serde_json::from_str::<serde_json::Value>(&l[i..]) {
                    Ok(v) => format!("{}{v}", &l[..i]),
                    Err(_) => l.to_owned(),
                }
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// The Rust snippet of docs/clients.md, word for word (checked below).
// docs/clients.md rust begin
pub async fn fx_clients(
    url: &str,
    client_password: &str,
    admin_password: &str,
    mut out: impl std::io::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // A user requests an exchange, as `client`, and gets the PubAck. Replies come back on
    // the identity's own inbox prefix: without custom_inbox_prefix the publish times out.
    let nc =
        async_nats::ConnectOptions::with_user_and_password("client".into(), client_password.into())
            .custom_inbox_prefix("_INBOX_client")
            .connect(url)
            .await?;
    let saga = uuid::Uuid::now_v7().to_string();
    let body = serde_json::json!({"saga_id": saga, "user_id": "alice", "krw_amount": "100000"});
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", saga.as_str());
    let ack = async_nats::jetstream::new(nc)
        .publish_with_headers(
            "fx.exchange.requested.alice",
            headers,
            body.to_string().into(),
        )
        .await?
        .await?;
    writeln!(
        out,
        "requested saga {saga}: stream {}, sequence {}",
        ack.stream, ack.sequence
    )?;

    // An operator, as `admin`: the FX stream, message by message, then an admin endpoint.
    let nc =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), admin_password.into())
            .custom_inbox_prefix("_INBOX_admin")
            .connect(url)
            .await?;
    let mut stream = async_nats::jetstream::new(nc.clone())
        .get_stream("FX")
        .await?;
    let state = stream.info().await?.state.clone();
    for seq in state.first_sequence..=state.last_sequence {
        let msg = stream.get_raw_message(seq).await?;
        let data = String::from_utf8_lossy(&msg.payload);
        writeln!(out, "{seq} {} {data}", msg.subject)?;
    }
    let reply = nc
        .request("fxadmin.krw.balance", r#"{"user_id":"alice"}"#.into())
        .await?;
    writeln!(out, "balance: {}", String::from_utf8_lossy(&reply.payload))?;
    Ok(())
}
// docs/clients.md rust end

#[test]
fn the_rust_snippet_of_the_docs_is_the_one_tested() {
    let this = include_str!("natscli.rs");
    let begin = "// docs/clients.md rust begin\n";
    let start = this.find(begin).unwrap() + begin.len();
    let end = this.find("// docs/clients.md rust end").unwrap();
    assert_eq!(
        clients_doc_block("rust").trim_end(),
        this[start..end].trim_end(),
        "docs/clients.md's Rust snippet differs from fx_clients in tests/tests/natscli.rs"
    );
}

#[tokio::test]
async fn the_rust_snippet_of_the_docs_publishes_reads_and_asks() {
    let sys = System::start_secured().await;
    let ids = sys.identities.clone().unwrap();
    sys.deposit_krw("alice", "5000000").await;
    let mut out = Vec::new();
    fx_clients(
        &sys.nats.url(),
        ids.password("client"),
        ids.password("admin"),
        &mut out,
    )
    .await
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    check_snippet_output(&sys, "the Rust snippet", &sorted_json_bodies(&out)).await;
    assert_no_violation(&sys);
}
