//! Namespaces, the init of the PID namespace, the user drop, capabilities
//! and no_new_privs, proven by what the agent can see and do. Root-only
//! (tier 2); skipped with the reason elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn ready(test: &str) -> bool {
    cgroups_available(test)
}

#[test]
fn standard_isolation_hides_the_host() {
    if !ready("standard_isolation_hides_the_host") {
        return;
    }
    let h = Home::new();
    let marker = format!("vallignus-tmp-probe-{}", std::process::id());
    let script = format!(
        "echo pid=$$; ls /proc | grep -c '^[0-9]'; hostname; touch /tmp/{marker}; \
         grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
         touch /dev/shm/{marker} && test -f /dev/shm/{marker} && echo shm-written"
    );
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "pid=2",
        "the agent is pid 2 under vallignus's init: {out}"
    );
    let procs: u32 = lines[1].parse().unwrap();
    assert!(procs <= 5, "the agent sees host processes: {procs}");
    assert_eq!(lines[2], "vallignus");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        !std::path::Path::new("/tmp").join(&marker).exists(),
        "the agent's /tmp is the host's"
    );
    assert!(out.contains("shm-written"), "{out}");
    assert!(
        !std::path::Path::new("/dev/shm").join(&marker).exists(),
        "the agent's /dev/shm is the host's"
    );
    let s = h.session_json();
    assert_eq!(
        s["enforcement"]["namespaces"]["detail"],
        "user,pid,mount,ipc,uts"
    );
    assert_eq!(s["enforcement"]["capabilities"]["enforced"], true);
    assert_eq!(s["enforcement"]["private_tmp"]["enforced"], true);
    assert_eq!(s["enforcement"]["landlock"]["enforced"], true);
}

/// As `nobody` under `--isolation standard`: the uid alone keeps a 0600
/// root file closed even where landlock grants reading; landlock alone
/// keeps world-writable directories outside `--rw` closed to writing; the
/// session directory and the vallignus home stay out of reach; the agent
/// lives in a user namespace whose map holds only nobody.
#[test]
fn nobody_is_held_by_its_uid_and_by_landlock() {
    let test = "nobody_is_held_by_its_uid_and_by_landlock";
    if !ready(test) || !landlock_available(test) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    // Outside /tmp: the agent's /tmp is a private tmpfs.
    let readable = tempfile::tempdir_in("/var/tmp").unwrap();
    let writable = tempfile::tempdir_in("/var/tmp").unwrap();
    let elsewhere = tempfile::tempdir_in("/var/tmp").unwrap();
    // World-writable everywhere: only landlock can refuse a write.
    for d in [readable.path(), writable.path(), elsewhere.path()] {
        mode(d, 0o777);
    }
    std::fs::write(readable.path().join("open"), "open to all").unwrap();
    std::fs::write(readable.path().join("secret"), "top secret").unwrap();
    mode(&readable.path().join("secret"), 0o600);
    let h = Home::outside_tmp();
    // The home's sessions, listed from inside the run: the run's own
    // session directory exists by the time the agent starts.
    let script = format!(
        "cat /proc/self/uid_map; cat {r}/open; echo; cat {r}/secret 2>&1; \
         touch {r}/new 2>&1 || echo ro-refused; \
         touch {w}/new && echo rw-ok; \
         touch {e}/new 2>&1 || echo elsewhere-refused; \
         ls {s} 2>&1 && echo sessions-listed; \
         ls {home} 2>&1 && echo home-listed; true",
        r = readable.path().display(),
        w = writable.path().display(),
        e = elsewhere.path().display(),
        s = h.sessions_dir().display(),
        home = h.path().display(),
    );
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--user",
        "nobody",
        "--ro",
        readable.path().to_str().unwrap(),
        "--rw",
        writable.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let map: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["65534", "65534", "1"], "{out}");
    assert!(
        out.contains("open to all"),
        "landlock must grant --ro: {out}"
    );
    assert!(
        !out.contains("top secret"),
        "nobody read a 0600 root file: {out}"
    );
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.contains("ro-refused"), "wrote into a --ro dir: {out}");
    assert!(!readable.path().join("new").exists());
    assert!(out.contains("rw-ok"), "cannot write into --rw: {out}");
    assert!(writable.path().join("new").exists());
    assert!(
        out.contains("elsewhere-refused"),
        "wrote outside --rw: {out}"
    );
    assert!(!elsewhere.path().join("new").exists());
    // Refused, not missing: the paths exist in the agent's mount namespace.
    assert!(
        !out.contains("sessions-listed"),
        "listed the sessions: {out}"
    );
    assert!(
        !out.contains("home-listed"),
        "listed the vallignus home: {out}"
    );
    assert!(!out.contains("No such file"), "{out}");
    // The secret, the --ro dir, elsewhere, the sessions, the home.
    assert_eq!(out.matches("Permission denied").count(), 5, "{out}");
    let s = h.session_json();
    assert_eq!(
        s["enforcement"]["namespaces"]["detail"],
        "user,pid,mount,ipc,uts"
    );
    assert_eq!(s["enforcement"]["user"]["enforced"], true);
    assert_eq!(s["enforcement"]["landlock"]["enforced"], true);
}

#[test]
fn nobody_cannot_read_root_files_and_strict_has_no_network() {
    if !ready("nobody_cannot_read_root_files_and_strict_has_no_network") {
        return;
    }
    // A listener on the host's loopback must be unreachable from the agent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Outside /tmp: the agent's /tmp is a private tmpfs.
    let secret = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    std::fs::write(secret.path(), "top secret").unwrap();
    std::fs::set_permissions(
        secret.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let h = Home::new();
    let script = format!(
        "id -u; cat {} 2>&1; python3 -c \"
import socket
s = socket.socket()
s.settimeout(2)
try:
    s.connect(('127.0.0.1', {port}))
    print('connected')
except OSError as e:
    print('refused', e.errno)
\"",
        secret.path().display()
    );
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "strict",
        "--user",
        "nobody",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("65534\n"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(!out.contains("top secret"), "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(!out.contains("connected"), "{out}");
    let s = h.session_json();
    assert_eq!(s["enforcement"]["user"]["enforced"], true);
    assert!(s["enforcement"]["namespaces"]["detail"]
        .as_str()
        .unwrap()
        .contains("net"));
}

#[test]
fn init_forwards_sigterm_and_reports_the_agents_status() {
    if !ready("init_forwards_sigterm_and_reports_the_agents_status") {
        return;
    }
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    // The agent handles SIGTERM itself: it must get it through init (or
    // the cgroup sweep) and its own exit status must reach the session.
    let script = format!("trap 'exit 5' TERM; sleep {m} & echo ready; echo over; wait");
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--max-output-lines",
        "1",
        "--kill-grace",
        "5",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    assert_none_left(&m);
    let exited = h
        .events()
        .into_iter()
        .find(|e| e["type"] == "process_exited")
        .unwrap();
    assert_eq!(exited["exit_code"], 5, "{exited}");

    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code(&o), 3);
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    assert_eq!(code(&o), 137);
    let listing: serde_json::Value =
        serde_json::from_slice(&h.run(&["sessions", "list", "--json"]).stdout).unwrap();
    let killed = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["exit_code"] == 137)
        .unwrap();
    assert_eq!(killed["exit_signal"], 9, "init reports the agent's signal");
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--",
        "/no/such/agent",
    ]);
    assert_eq!(code(&o), 127, "{}", stderr(&o));
}

#[test]
fn sigterm_handler_runs_at_teardown_in_a_pid_namespace() {
    if !ready("sigterm_handler_runs_at_teardown_in_a_pid_namespace") {
        return;
    }
    let h = Home::new();
    let id_file = h.path().join("id");
    let script = "trap 'echo got TERM; exit 5' TERM; echo ready; while :; do sleep 0.05; done";
    let child = h
        .run_sh(&["--isolation", "standard"], &id_file, script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // End the run only once the agent has set its trap (no timing guess:
    // under emulation the setup alone can take a second).
    wait_for_event(&h, &id_file, "\"line\":\"ready\"");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 143, "{}", stderr(&o));
    assert!(stdout(&o).contains("got TERM"), "{}", stdout(&o));
    let events = h.events();
    let exited = events
        .iter()
        .find(|e| e["type"] == "process_exited")
        .unwrap();
    assert_eq!(
        exited["exit_code"], 5,
        "the agent's own exit, reported by init"
    );
}

#[test]
fn bad_isolation_flags_fail_closed() {
    let h = Home::new();
    for (args, needle) in [
        (vec!["--isolation", "max"], "--isolation"),
        (vec!["--unshare", "pid,cgroup"], "--unshare"),
        (vec!["--user", "no-such-user-xyz"], "--user"),
        (vec!["--user", "root"], "--user"),
    ] {
        let mut full = vec!["run"];
        full.extend(args.iter());
        full.extend(["--", "true"]);
        let o = h.run(&full);
        assert_eq!(code(&o), 125, "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn default_seccomp_profile_is_applied_in_standard_isolation() {
    if !ready("default_seccomp_profile_is_applied_in_standard_isolation") {
        return;
    }
    let h = Home::new();
    let script = "grep -E '^Seccomp:' /proc/self/status; unshare -U true 2>&1; echo unshare=$?; \
                  python3 -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); \
print(\"ptrace\", l.ptrace(0,0,0,0), os.strerror(ctypes.get_errno()))'";
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Seccomp:\t2"), "no filter in force: {out}");
    assert!(out.contains("unshare=1"), "{out}");
    assert!(out.contains("ptrace -1 Operation not permitted"), "{out}");
    let s = h.session_json();
    assert!(s["enforcement"]["seccomp"]["detail"]
        .as_str()
        .unwrap()
        .contains("profile default"));
    // --seccomp none turns it off even with isolation.
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--seccomp",
        "none",
        "--",
        "grep",
        "Seccomp:",
        "/proc/self/status",
    ]);
    assert_eq!(stdout(&o), "Seccomp:\t0\n");
}

#[test]
fn environment_policy_keeps_secrets_out() {
    if !ready("environment_policy_keeps_secrets_out") {
        return;
    }
    let h = Home::new();
    let o = h
        .cmd()
        .env("OPENAI_API_KEY", "sk-very-secret")
        .env("KEEP_ME", "kept")
        .args([
            "run",
            "-q",
            "--clear-env",
            "--env",
            "KEEP_ME",
            "--env",
            "MODE=test",
            "--",
            "sh",
            "-c",
            "env | sort",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains("sk-very-secret"), "{out}");
    assert!(out.contains("KEEP_ME=kept\n"), "{out}");
    assert!(out.contains("MODE=test\n"), "{out}");
    assert!(out.contains("PATH="), "{out}");
    let s = h.session_json();
    let names: Vec<&str> = s["agent_env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"KEEP_ME") && !names.contains(&"OPENAI_API_KEY"),
        "{names:?}"
    );
    let raw = std::fs::read_to_string(h.only_session().join("session.json")).unwrap();
    assert!(
        !raw.contains("sk-very-secret") && !raw.contains("kept"),
        "values recorded"
    );

    // Without --clear-env the environment is inherited (0.4.2's behaviour),
    // and strict isolation clears it.
    let h = Home::new();
    let o = h
        .cmd()
        .env("OPENAI_API_KEY", "sk-very-secret")
        .args([
            "run",
            "-q",
            "--isolation",
            "strict",
            "--",
            "sh",
            "-c",
            "env",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stdout(&o).contains("sk-very-secret"));
    assert_eq!(code(&h.run(&["run", "--env", "1BAD", "--", "true"])), 125);
}

/// The host's daemons listen on Unix sockets under /run (Docker's,
/// systemd's, D-Bus): reached by path, they bypass the network namespace,
/// and an agent that is root in its user namespace passes the permission
/// check of a root-owned socket. With a mount namespace its /run is a
/// private tmpfs: such a socket is out of reach, with the proxy, with no
/// network and with the host's network. At `--isolation none` the agent
/// shares the host's filesystem, sockets included (documented).
#[test]
fn the_hosts_unix_sockets_in_run_are_out_of_reach() {
    let test = "the_hosts_unix_sockets_in_run_are_out_of_reach";
    if !ready(test) || !std::path::Path::new("/run").is_dir() {
        return;
    }
    let path = format!("/run/vallignus-test-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(path.clone());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    listener.set_nonblocking(true).unwrap();
    let probe = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\n\
         try:\n    s.connect('{path}'); print('connected')\n\
         except OSError as e:\n    print('refused', e.errno)"
    );
    let h = Home::new();
    let run = |flags: &[&str]| {
        let mut args = vec!["run", "-q"];
        args.extend(flags);
        args.extend(["--", "python3", "-c", &probe]);
        let o = h.run(&args);
        assert_eq!(code(&o), 0, "{flags:?}: {}", stderr(&o));
        stdout(&o).trim().to_owned()
    };
    // The control: the agent as root without a mount namespace connects.
    assert_eq!(run(&["--isolation", "none"]), "connected");
    let _ = listener.accept();
    for flags in [
        &["--isolation", "standard"][..],
        &["--isolation", "strict"][..],
        &["--isolation", "standard", "--net", "none"][..],
        &["--isolation", "standard", "--allow-domain", "x.test"][..],
    ] {
        let out = run(flags);
        // ENOENT: the path is not there at all (not a landlock refusal).
        assert_eq!(out, "refused 2", "{flags:?}");
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{flags:?}: the socket was reached"
        );
    }
    let h = Home::new();
    let o = h.run(&["run", "-q", "--isolation", "standard", "--", "true"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let detail = h.session_json()["enforcement"]["private_run"]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.starts_with("tmpfs on /run (size=1M,"), "{detail}");
    assert!(detail.contains(", empty: "), "{detail}");
}

/// What `--ro` and `--rw` grant under /run stays granted in the agent's
/// private /run, as granted, as root and as nobody: the directory is
/// bound back at its path, read-only or read-write; the rest of /run
/// stays hidden, and a grant of /run itself is refused.
#[test]
fn ro_and_rw_paths_under_run_are_kept_in_the_private_run() {
    let test = "ro_and_rw_paths_under_run_are_kept_in_the_private_run";
    if !ready(test) || !std::path::Path::new("/run").is_dir() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let base = std::path::PathBuf::from(format!("/run/vallignus-test-{}", std::process::id()));
    let _remove = RemoveDir(base.clone());
    let (ro, rw) = (base.join("ro"), base.join("rw"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(base.join("sibling"), "hidden\n").unwrap();
    std::fs::write(ro.join("in"), "given\n").unwrap();
    std::fs::write(ro.join("tool"), "#!/bin/sh\necho tool-ran\n").unwrap();
    std::fs::set_permissions(ro.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [&base, &ro, &rw] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let script = format!(
        "cat {ro}/in; echo x > {ro}/out 2>/dev/null && echo ro-written; \
         echo from-agent > {rw}/out && echo rw-written; \
         [ -e {base}/sibling ] && echo sibling-visible; {ro}/tool; \
         awk '$5 == \"{ro}\" && $6 ~ /^ro(,|$)/ {{ found = 1 }} END {{ exit !found }}' \
         /proc/self/mountinfo && echo mounted-ro; echo done",
        ro = ro.display(),
        rw = rw.display(),
        base = base.display()
    );
    for user in [&[][..], &["--user", "nobody"][..]] {
        let _ = std::fs::remove_file(rw.join("out"));
        let h = Home::new();
        let mut args = vec!["run", "-q", "--isolation", "standard"];
        args.extend(user);
        args.extend(["--ro", ro.to_str().unwrap(), "--rw", rw.to_str().unwrap()]);
        args.extend(["--", "sh", "-c", &script]);
        let o = h.run(&args);
        assert_eq!(code(&o), 0, "{user:?}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.starts_with("given\nrw-written\n"), "{user:?}: {out}");
        assert!(!out.contains("ro-written"), "{user:?}: {out}");
        // Only the kept paths exist in the private /run (a stat, which
        // landlock does not govern, so this is the mount's doing).
        // The read-only bind is read-only as a mount (not only by landlock),
        // and what --ro grants stays executable.
        assert!(
            out.ends_with("rw-written\ntool-ran\nmounted-ro\ndone\n"),
            "{user:?}: {out}"
        );
        assert!(!ro.join("out").exists());
        assert_eq!(
            std::fs::read_to_string(rw.join("out")).unwrap(),
            "from-agent\n"
        );
        let detail = h.session_json()["enforcement"]["private_run"]["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            detail.contains(&format!("{} (read-only)", ro.display()))
                && detail.contains(&format!("{} (read-write)", rw.display()))
                && detail.contains("except any inside a kept directory"),
            "{detail}"
        );
    }
    // /run itself would give every socket back.
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--isolation",
        "standard",
        "--ro",
        "/var/run",
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("--ro /var/run: that is /run itself"),
        "{}",
        stderr(&o)
    );
}

/// A working directory under /run is kept (read-write, as landlock grants
/// it) and entered again after the mounts: `..` is the private /run, not
/// the host's.
#[test]
fn a_working_directory_under_run_does_not_lead_back_to_the_hosts_run() {
    let test = "a_working_directory_under_run_does_not_lead_back_to_the_hosts_run";
    if !ready(test) || !std::path::Path::new("/run").is_dir() {
        return;
    }
    let base = std::path::PathBuf::from(format!("/run/vallignus-cwd-{}", std::process::id()));
    let _remove = RemoveDir(base.clone());
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(base.join("sibling"), "hidden\n").unwrap();
    let h = Home::new();
    let o = h
        .cmd()
        .current_dir(&work)
        .args(["run", "-q", "--isolation", "standard", "--"])
        .args([
            "sh",
            "-c",
            "pwd; [ -e ../work ] && echo work-there; [ -e ../sibling ] && echo sibling-visible; \
             echo made > here",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out, format!("{}\nwork-there\n", work.display()));
    assert_eq!(
        std::fs::read_to_string(work.join("here")).unwrap(),
        "made\n"
    );
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The same for /tmp: a working directory in the host's /tmp is kept in
/// the private /tmp and entered again, so `..` does not lead to the host's
/// /tmp (other users' files, ssh-agent sockets); what --rw grants under
/// /tmp is kept too (it used to be hidden by the private /tmp).
#[test]
fn a_working_directory_in_the_hosts_tmp_does_not_lead_back_to_it() {
    let test = "a_working_directory_in_the_hosts_tmp_does_not_lead_back_to_it";
    if !ready(test) {
        return;
    }
    let base = tempfile::tempdir_in("/tmp").unwrap();
    let work = base.path().join("work");
    let granted = base.path().join("granted");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::write(base.path().join("sibling"), "hidden\n").unwrap();
    let h = Home::new();
    let script = format!(
        "pwd; [ -e ../work ] && echo work-there; [ -e ../sibling ] && echo sibling-visible; \
         echo made > here; echo given > {}/file",
        granted.display()
    );
    let o = h
        .cmd()
        .current_dir(&work)
        .args(["run", "-q", "--isolation", "standard", "--rw"])
        .arg(&granted)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\nwork-there\n", work.display()));
    assert_eq!(
        std::fs::read_to_string(work.join("here")).unwrap(),
        "made\n"
    );
    assert_eq!(
        std::fs::read_to_string(granted.join("file")).unwrap(),
        "given\n"
    );
    let detail = h.session_json()["enforcement"]["private_tmp"]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    // Started from /tmp itself: the agent starts in its own, empty /tmp.
    // (Its home must not be in /tmp: landlock grants the working directory
    // and could not hide the home inside it.)
    let h2 = Home::outside_tmp();
    let o = h2
        .cmd()
        .current_dir("/tmp")
        .args(["run", "-q", "--isolation", "standard", "--"])
        .args(["sh", "-c", "pwd; ls -A | wc -l"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "/tmp\n0\n");
    assert!(
        detail.contains(&format!("{} (read-write)", work.display()))
            && detail.contains(&format!("{} (read-write)", granted.display())),
        "{detail}"
    );
}
