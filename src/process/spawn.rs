//! Spawning a handler the way `posix_spawn` does, plus the one step it cannot do.
//!
//! Every handler must get a parent-death signal, which the child has to request itself between
//! fork and exec. With std's `Command`, any such pre-exec step forces a full `fork()` of the
//! watchdog; measured on a 2-core machine that cost about 40% of the request rate of a `cat`
//! handler. So, like glibc's `posix_spawn`, this module uses `clone(CLONE_VM | CLONE_VFORK)`:
//! the child borrows the parent's memory on a small stack of its own, does only
//! async-signal-safe system calls (dup2, setpgid, prctl, sigaction, sigprocmask, execve), and
//! the parent thread resumes once the child has exec'd or died.
//!
//! The child:
//! - gets the three pipe ends as stdin, stdout and stderr (all other fds are close-on-exec);
//! - leads a new process group (`setpgid(0, 0)`), so the whole group can be killed at once;
//! - gets `PR_SET_PDEATHSIG = SIGKILL`, and exits if the parent already died before that;
//! - starts with default signal handlers (SIGPIPE included) and an empty signal mask;
//! - optionally changes to a working directory.

use std::cell::RefCell;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::{c_char, c_int, c_void};

/// Stack for the cloned child, per thread (a thread spawns one child at a time: CLONE_VFORK
/// suspends it until the child has exec'd).
const CHILD_STACK: usize = 128 * 1024;

thread_local! {
    static STACK: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A program to run: the resolved executable and its argv, ready for execve.
#[derive(Debug)]
pub struct Program {
    /// Absolute (or explicitly relative) path of the executable.
    path: CString,
    /// argv, argv[0] as the user wrote it.
    argv: Vec<CString>,
    /// The command line, for messages.
    display: String,
    /// Whether `path` was found (or given with a slash).
    resolved: bool,
}

/// The environment every child inherits, as `NAME=value` strings.
#[derive(Debug)]
pub struct BaseEnv {
    /// The entries.
    entries: Vec<CString>,
}

impl BaseEnv {
    /// The current process environment.
    pub fn capture() -> Self {
        let entries = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut entry = k.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(v.as_bytes());
                CString::new(entry).ok()
            })
            .collect();
        BaseEnv { entries }
    }

    /// An explicit environment (for tests and embedding).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        BaseEnv {
            entries: pairs
                .into_iter()
                .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
                .collect(),
        }
    }
}

impl Program {
    /// Resolves `argv[0]` against `PATH` (from `env`) once, so each spawn is a plain execve.
    /// A name that cannot be resolved is kept as is; each spawn then fails with ENOENT.
    pub fn new(argv: &[String], path_var: Option<&OsStr>) -> io::Result<Self> {
        let (first, _) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let found = resolve(first, path_var);
        let resolved = found.is_some();
        let found = found.unwrap_or_else(|| PathBuf::from(first));
        let cstr = |s: &[u8]| {
            CString::new(s).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "command contains a NUL byte")
            })
        };
        Ok(Program {
            path: cstr(found.as_os_str().as_bytes())?,
            resolved,
            argv: argv
                .iter()
                .map(|a| cstr(a.as_bytes()))
                .collect::<io::Result<_>>()?,
            display: argv.join(" "),
        })
    }

    /// The resolved executable and its arguments, to run it through another command.
    pub fn argv_strings(&self) -> Vec<String> {
        let mut out = vec![String::from_utf8_lossy(self.path.as_bytes()).into_owned()];
        out.extend(
            self.argv
                .iter()
                .skip(1)
                .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned()),
        );
        out
    }

    /// The command line, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Whether the executable was found on `PATH` (or named by a path).
    pub fn is_resolved(&self) -> bool {
        self.resolved
    }
}

/// Finds `name` in the directories of `path_var`, as a shell would.
pub fn resolve(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let dirs = path_var?;
    std::env::split_paths(dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A freshly spawned child and the parent's ends of its pipes.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid (and process group id).
    pub pid: i32,
    /// Write end of the child's stdin.
    pub stdin: OwnedFd,
    /// Read end of the child's stdout.
    pub stdout: OwnedFd,
    /// Read end of the child's stderr.
    pub stderr: OwnedFd,
}

/// What the child needs, shared through the borrowed memory.
#[repr(C)]
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    /// Child ends of the pipes, for fds 0, 1, 2; all >= 3.
    fds: [c_int; 3],
    /// Our pid; the child checks it still has this parent after asking for the death signal.
    parent: libc::pid_t,
    /// errno of the step that failed, 0 on success (the child execs).
    error: c_int,
    /// Which step failed.
    stage: c_int,
    /// Directory to change to before exec, or null to stay.
    cwd: *const c_char,
}

const STAGE_DUP: c_int = 1;
const STAGE_SETPGID: c_int = 2;
const STAGE_PDEATHSIG: c_int = 3;
const STAGE_PARENT_GONE: c_int = 4;
const STAGE_EXEC: c_int = 5;
const STAGE_CHDIR: c_int = 6;

/// The working directory of a child, ready for chdir.
pub fn directory(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "directory contains a NUL byte"))
}

/// Spawns `program` with `base` plus `extra` as its environment (`extra` wins on a clash).
pub fn spawn(program: &Program, base: &BaseEnv, extra: &[(String, String)]) -> io::Result<Spawned> {
    spawn_in(program, base, extra, None)
}

/// Like [`spawn`], in the working directory `cwd` (see [`directory`]) when given.
pub fn spawn_in(
    program: &Program,
    base: &BaseEnv,
    extra: &[(String, String)],
    cwd: Option<&CStr>,
) -> io::Result<Spawned> {
    let extra_entries: Vec<CString> = extra
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let overridden = |entry: &CString| {
        let bytes = entry.as_bytes();
        let name = &bytes[..bytes.iter().position(|&b| b == b'=').unwrap_or(bytes.len())];
        extra.iter().any(|(k, _)| k.as_bytes() == name)
    };
    let mut envp: Vec<*const c_char> = base
        .entries
        .iter()
        .filter(|e| extra.is_empty() || !overridden(e))
        .chain(extra_entries.iter())
        .map(|e| e.as_ptr())
        .collect();
    envp.push(std::ptr::null());
    let mut argv: Vec<*const c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let (stdin_child, stdin) = pipe()?;
    let (stdout, stdout_child) = pipe()?;
    let (stderr, stderr_child) = pipe()?;
    let mut args = ChildArgs {
        path: program.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        fds: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        parent: std::process::id() as libc::pid_t,
        error: 0,
        stage: 0,
        cwd: cwd.map_or(std::ptr::null(), CStr::as_ptr),
    };

    let pid = STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        if stack.len() < CHILD_STACK {
            // A zeroed allocation of this size is fresh mmap'd memory: only the pages the
            // child actually touches become resident.
            *stack = vec![0; CHILD_STACK];
        }
        // The stack grows down; its top must be 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
        // SAFETY: all signals are blocked around clone so that no handler of ours can run in
        // the child, which shares our memory; the mask is restored right after.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            // SAFETY: child_main only reads `args` and makes async-signal-safe system calls on
            // its own stack; CLONE_VFORK keeps this thread (and so `args`, `argv`, `envp` and
            // the stack) suspended and alive until the child has exec'd or exited.
            let pid = libc::clone(
                child_main,
                top as *mut c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut args).cast::<c_void>(),
            );
            let err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 { Err(err) } else { Ok(pid) }
        }
    })?;
    drop((stdin_child, stdout_child, stderr_child));

    if args.error != 0 {
        // The child exited with 127 without exec'ing: reap it and report why.
        let mut status = 0;
        // SAFETY: pid is our child and has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let source = io::Error::from_raw_os_error(args.error);
        let step = match args.stage {
            STAGE_DUP => "redirecting stdio",
            STAGE_SETPGID => "creating its process group",
            STAGE_PDEATHSIG => "setting the parent-death signal",
            STAGE_PARENT_GONE => "checking its parent",
            STAGE_CHDIR => "changing to its working directory",
            STAGE_EXEC => return Err(source),
            _ => "starting",
        };
        return Err(io::Error::new(source.kind(), format!("{step}: {source}")));
    }
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
    })
}

/// A close-on-exec pipe as (read end, write end), both numbered 3 or above so that the child's
/// dup2 onto 0..2 can never clobber one of them.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor >= 3 that we own.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Runs in the child on its own stack, sharing the parent's memory. Async-signal-safe calls only;
/// no allocation, no locks, no panics.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points at the parent's ChildArgs, alive while the parent is suspended.
    let args = unsafe { &mut *arg.cast::<ChildArgs>() };
    // SAFETY: plain system calls on values prepared by the parent.
    unsafe {
        let fail = |args: &mut ChildArgs, stage: c_int| -> c_int {
            args.error = *libc::__errno_location();
            if args.error == 0 {
                args.error = libc::EINVAL;
            }
            args.stage = stage;
            libc::_exit(127)
        };

        // Default handlers for everything we handle (and SIGPIPE, which Rust ignores), so a
        // signal arriving before exec cannot run our handlers on shared memory.
        let mut action: libc::sigaction = std::mem::zeroed();
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, std::ptr::null(), &mut action) != 0 {
                continue;
            }
            let handler = action.sa_sigaction;
            if sig == libc::SIGPIPE || (handler != libc::SIG_IGN && handler != libc::SIG_DFL) {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }

        for (target, fd) in args.fds.iter().enumerate() {
            if libc::dup2(*fd, target as c_int) < 0 {
                return fail(args, STAGE_DUP);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(args, STAGE_SETPGID);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return fail(args, STAGE_PDEATHSIG);
        }
        if libc::getppid() != args.parent {
            *libc::__errno_location() = libc::ESRCH;
            return fail(args, STAGE_PARENT_GONE);
        }
        if !args.cwd.is_null() && libc::chdir(args.cwd) != 0 {
            return fail(args, STAGE_CHDIR);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        libc::execve(args.path, args.argv, args.envp);
        fail(args, STAGE_EXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_on_path() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let p = resolve("sh", Some(path));
        assert!(p.is_some_and(|p| p.ends_with("sh")));
        assert_eq!(resolve("./x", Some(path)), Some(PathBuf::from("./x")));
        assert_eq!(resolve("no-such-command-here", Some(path)), None);
    }

    #[test]
    fn spawns_and_reports_exec_errors() -> io::Result<()> {
        let program = Program::new(&["/nonexistent/bin".to_string()], None)?;
        let err = spawn(&program, &BaseEnv::from_pairs([]), &[]).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::NotFound));

        let program = Program::new(
            &["sh".into(), "-c".into(), "echo $A$B; exit 3".into()],
            Some(OsStr::new("/bin:/usr/bin")),
        )?;
        let spawned = spawn(
            &program,
            &BaseEnv::from_pairs([("A", "base"), ("B", "shadowed")]),
            &[("B".into(), "-extra".into())],
        )?;
        drop(spawned.stdin);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(spawned.stdout), &mut out)?;
        assert_eq!(out, "base-extra\n");
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(spawned.pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 3);
        Ok(())
    }
}
