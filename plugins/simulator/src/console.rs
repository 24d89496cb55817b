//! The serial console of a small fake Linux guest: a getty-style login, then a shell that
//! knows a handful of commands. A session is a line discipline over raw input bytes: it
//! echoes what is typed (except passwords), handles backspace, Ctrl-C, Ctrl-U and Ctrl-D,
//! swallows escape sequences (arrow keys), and runs a line on CR or LF (CRLF counts once).
//! Output uses CRLF line endings.

use crate::clock;

/// The kernel release the guest reports.
pub(crate) const KERNEL: &str = "6.1.0-orchard-sim";
/// Longest input line kept; further bytes ring the bell.
const MAX_LINE: usize = 1024;
pub(crate) const DEFAULT_COLS: u16 = 80;
pub(crate) const DEFAULT_ROWS: u16 = 24;

/// What the console needs to know about its machine at the moment input arrives.
pub(crate) struct Guest<'a> {
    pub title: &'a str,
    pub uptime_secs: f64,
    /// Current CPU load in percent of the whole machine, and its vCPU count.
    pub cpu_percent: f64,
    pub vcpu: u32,
    pub wall_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    Login,
    Password { user: String },
    Shell { user: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [ …` (CSI), until its final byte.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// The machine this session is open on.
    pub machine: String,
    pub cols: u16,
    pub rows: u16,
    mode: Mode,
    line: Vec<u8>,
    esc: Esc,
    last_cr: bool,
}

/// What getty prints: the issue banner, then the login prompt.
pub(crate) fn banner(title: &str) -> Vec<u8> {
    format!("\r\nOrchard simulator \u{2014} {title} ttyS0\r\n\r\n{title} login: ").into_bytes()
}

fn push_line(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

impl Session {
    pub(crate) fn new(machine: String) -> Self {
        Self {
            machine,
            cols: DEFAULT_COLS,
            rows: DEFAULT_ROWS,
            mode: Mode::Login,
            line: Vec::new(),
            esc: Esc::None,
            last_cr: false,
        }
    }

    /// The user logged in, if any.
    #[cfg(test)]
    pub(crate) fn user(&self) -> Option<&str> {
        match &self.mode {
            Mode::Shell { user } => Some(user),
            _ => None,
        }
    }

    fn echoes(&self) -> bool {
        !matches!(self.mode, Mode::Password { .. })
    }

    fn prompt(&self, title: &str) -> String {
        match &self.mode {
            Mode::Login => format!("{title} login: "),
            Mode::Password { .. } => "Password: ".to_owned(),
            Mode::Shell { user } => {
                let sign = if user == "root" { '#' } else { '$' };
                format!("{user}@{title}:~{sign} ")
            }
        }
    }

    /// Feeds input bytes; returns what the guest prints in answer.
    pub(crate) fn input(&mut self, data: &[u8], guest: &Guest<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in data {
            let after_cr = std::mem::replace(&mut self.last_cr, false);
            match self.esc {
                Esc::Start => {
                    self.esc = match b {
                        b'[' => Esc::Csi,
                        b'O' => Esc::Ss3,
                        _ => Esc::None,
                    };
                    continue;
                }
                Esc::Csi => {
                    if !(0x20..=0x3f).contains(&b) {
                        self.esc = Esc::None;
                    }
                    continue;
                }
                Esc::Ss3 => {
                    self.esc = Esc::None;
                    continue;
                }
                Esc::None => {}
            }
            match b {
                0x1b => self.esc = Esc::Start,
                b'\r' => {
                    self.last_cr = true;
                    self.enter(guest, &mut out);
                }
                b'\n' if after_cr => {}
                b'\n' => self.enter(guest, &mut out),
                0x7f | 0x08 => {
                    if !self.line.is_empty() {
                        // Drop one whole UTF-8 character.
                        while let Some(c) = self.line.pop() {
                            if c & 0xc0 != 0x80 {
                                break;
                            }
                        }
                        if self.echoes() {
                            out.extend_from_slice(b"\x08 \x08");
                        }
                    }
                }
                // Ctrl-C: abandon the line.
                0x03 => {
                    self.line.clear();
                    out.extend_from_slice(b"^C\r\n");
                    if matches!(self.mode, Mode::Password { .. }) {
                        self.mode = Mode::Login;
                    }
                    out.extend_from_slice(self.prompt(guest.title).as_bytes());
                }
                // Ctrl-U: erase the line.
                0x15 => {
                    if self.echoes() {
                        let chars = String::from_utf8_lossy(&self.line).chars().count();
                        for _ in 0..chars {
                            out.extend_from_slice(b"\x08 \x08");
                        }
                    }
                    self.line.clear();
                }
                // Ctrl-D on an empty shell line logs out.
                0x04 => {
                    if self.line.is_empty() && matches!(self.mode, Mode::Shell { .. }) {
                        out.extend_from_slice(b"\r\n");
                        self.logout(guest.title, &mut out);
                    }
                }
                b if b < 0x20 => {}
                b => {
                    if self.line.len() >= MAX_LINE {
                        out.push(0x07);
                    } else {
                        self.line.push(b);
                        if self.echoes() {
                            out.push(b);
                        }
                    }
                }
            }
        }
        out
    }

    fn logout(&mut self, title: &str, out: &mut Vec<u8>) {
        push_line(out, "logout");
        self.mode = Mode::Login;
        out.extend_from_slice(&banner(title));
    }

    fn enter(&mut self, guest: &Guest<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
        match std::mem::replace(&mut self.mode, Mode::Login) {
            Mode::Login => {
                let user = line.trim();
                if !user.is_empty() {
                    self.mode = Mode::Password {
                        user: user.to_owned(),
                    };
                }
            }
            Mode::Password { user } => {
                if line.is_empty() || user.chars().any(char::is_whitespace) {
                    out.extend_from_slice(b"\r\nLogin incorrect\r\n");
                } else {
                    self.motd(guest, out);
                    self.mode = Mode::Shell { user };
                }
            }
            Mode::Shell { user } => {
                self.mode = Mode::Shell { user: user.clone() };
                if self.run(&user, &line, guest, out) {
                    return;
                }
            }
        }
        out.extend_from_slice(self.prompt(guest.title).as_bytes());
    }

    fn motd(&self, guest: &Guest<'_>, out: &mut Vec<u8>) {
        push_line(out, &format!("Linux {} {KERNEL} x86_64", guest.title));
        push_line(out, "");
        push_line(
            out,
            "This machine is simulated by Orchard: nothing here is real.",
        );
        push_line(out, "Type 'help' to see what it can do.");
        push_line(out, "");
    }

    /// Runs one shell line. Returns true when it logged out (the prompt is already shown).
    fn run(&mut self, user: &str, line: &str, guest: &Guest<'_>, out: &mut Vec<u8>) -> bool {
        let title = guest.title;
        let home = if user == "root" {
            "/root".to_owned()
        } else {
            format!("/home/{user}")
        };
        let words: Vec<String> = words(line)
            .into_iter()
            .map(|w| match w.as_str() {
                "$USER" | "$LOGNAME" => user.to_owned(),
                "$HOME" | "$PWD" => home.clone(),
                "$HOSTNAME" => title.to_owned(),
                "$SHELL" => "/bin/sh".to_owned(),
                _ => w,
            })
            .collect();
        let Some((cmd, args)) = words.split_first() else {
            return false;
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match (cmd.as_str(), args.as_slice()) {
            ("exit" | "logout", _) => {
                self.logout(title, out);
                return true;
            }
            ("help", _) => {
                for l in [
                    "Commands:",
                    "  help        this list",
                    "  whoami, id  who you are",
                    "  hostname    the machine's name",
                    "  uname [-a]  the system",
                    "  uptime      how long the machine has been up",
                    "  date        the date and time (UTC)",
                    "  echo ...    print the arguments",
                    "  ls, cat     look around",
                    "  pwd         where you are",
                    "  stty size   the terminal size (rows cols)",
                    "  clear       clear the screen",
                    "  exit        log out (also: logout, Ctrl-D)",
                ] {
                    push_line(out, l);
                }
            }
            ("whoami", _) => push_line(out, user),
            ("id", _) => {
                let uid = if user == "root" { 0 } else { 1000 };
                push_line(
                    out,
                    &format!("uid={uid}({user}) gid={uid}({user}) groups={uid}({user})"),
                );
            }
            ("hostname", _) => push_line(out, title),
            ("uname", []) | ("uname", ["-s"]) => push_line(out, "Linux"),
            ("uname", ["-a"]) => {
                push_line(out, &format!("Linux {title} {KERNEL} x86_64 GNU/Linux"))
            }
            ("uname", ["-r"]) => push_line(out, KERNEL),
            ("uname", ["-n"]) => push_line(out, title),
            ("uname", ["-m"]) => push_line(out, "x86_64"),
            ("uname", [other, ..]) => {
                push_line(out, &format!("uname: invalid option -- '{other}'"));
            }
            ("uptime", _) => push_line(out, &uptime_line(guest)),
            ("date", _) => push_line(out, &clock::date_line(guest.wall_ms)),
            ("echo", words) => push_line(out, &words.join(" ")),
            ("pwd", _) => push_line(out, &home),
            ("clear", _) => out.extend_from_slice(b"\x1b[H\x1b[2J"),
            ("stty", ["size"]) => push_line(out, &format!("{} {}", self.rows, self.cols)),
            ("stty", []) => push_line(
                out,
                &format!(
                    "speed 115200 baud; rows {}; columns {}; line = 0;",
                    self.rows, self.cols
                ),
            ),
            ("stty", _) => {}
            ("ls", paths) => {
                let paths = if paths.is_empty() { &["."][..] } else { paths };
                for p in paths.iter().filter(|p| !p.starts_with('-')) {
                    match listing(p, &home) {
                        Some(l) => push_line(out, l),
                        None => push_line(
                            out,
                            &format!("ls: cannot access '{p}': No such file or directory"),
                        ),
                    }
                }
                if paths.iter().all(|p| p.starts_with('-')) {
                    push_line(out, listing(".", &home).unwrap_or_default());
                }
            }
            ("cat", files) => {
                for f in files.iter() {
                    match file(f, &home, title) {
                        Some(text) => {
                            for l in text.lines() {
                                push_line(out, l);
                            }
                        }
                        None => push_line(out, &format!("cat: {f}: No such file or directory")),
                    }
                }
            }
            (other, _) => push_line(out, &format!("-sh: {other}: command not found")),
        }
        false
    }
}

/// `uptime`'s line: ` 12:34:56 up 3 days,  2:01,  1 user,  load average: 0.42, 0.39, 0.35`.
fn uptime_line(g: &Guest<'_>) -> String {
    let secs = g.uptime_secs.max(0.0) as u64;
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    let mut up = String::new();
    if days > 0 {
        up.push_str(&format!("{days} day{}, ", if days == 1 { "" } else { "s" }));
    }
    if hours > 0 {
        up.push_str(&format!("{hours:2}:{mins:02}"));
    } else {
        up.push_str(&format!("{mins} min"));
    }
    let load = g.cpu_percent / 100.0 * f64::from(g.vcpu);
    format!(
        " {} up {up},  1 user,  load average: {:.2}, {:.2}, {:.2}",
        clock::hms(g.wall_ms),
        load,
        load * 0.93,
        load * 0.87
    )
}

/// Splits a shell line into words, honouring single and double quotes and backslashes.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                    in_word = true;
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            },
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn in_home<'a>(path: &'a str, home: &str) -> Option<&'a str> {
    let rest = path
        .strip_prefix("~/")
        .or_else(|| path.strip_prefix(home).and_then(|r| r.strip_prefix('/')))
        .or_else(|| path.strip_prefix("./"))
        .unwrap_or(path);
    (!rest.starts_with('/')).then_some(rest)
}

fn listing(path: &str, home: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    match path {
        "" => {
            Some("bin  boot  dev  etc  home  lib  proc  root  run  sbin  srv  sys  tmp  usr  var")
        }
        "/etc" => Some("hostname  hosts  os-release  passwd"),
        "/tmp" | "/srv" => Some(""),
        _ => match in_home(path, home) {
            Some("." | "~" | "") => Some("README  notes.txt"),
            _ if path == home => Some("README  notes.txt"),
            Some("README") => Some("README"),
            Some("notes.txt") => Some("notes.txt"),
            _ => None,
        },
    }
}

fn file(path: &str, home: &str, title: &str) -> Option<String> {
    Some(match path {
        "/etc/hostname" => title.to_owned(),
        "/etc/os-release" => {
            "PRETTY_NAME=\"Orchard Simulated Linux 1.0\"\nNAME=\"Orchard Simulated \
                              Linux\"\nVERSION_ID=\"1.0\"\nID=orchard-sim"
                .to_owned()
        }
        "/etc/hosts" => format!("127.0.0.1\tlocalhost\n127.0.1.1\t{title}"),
        _ => match in_home(path, home)? {
            "README" => "This machine is simulated by Orchard's simulator backend.\nNothing \
                         you do here changes anything real."
                .to_owned(),
            "notes.txt" => "TODO: water the apple trees.".to_owned(),
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Guest<'static> {
        Guest {
            title: "sim-vm-01",
            uptime_secs: 3.0 * 86_400.0 + 2.0 * 3600.0 + 61.0,
            cpu_percent: 25.0,
            vcpu: 2,
            wall_ms: 1_716_467_696_000,
        }
    }

    fn feed(s: &mut Session, input: &str) -> String {
        String::from_utf8(s.input(input.as_bytes(), &guest())).unwrap()
    }

    fn logged_in(user: &str) -> Session {
        let mut s = Session::new("m".into());
        feed(&mut s, &format!("{user}\r"));
        feed(&mut s, "pw\r");
        assert_eq!(s.user(), Some(user));
        s
    }

    #[test]
    fn login_hides_password_and_shows_prompt() {
        let mut s = Session::new("m".into());
        assert_eq!(feed(&mut s, "ali"), "ali");
        assert_eq!(feed(&mut s, "x\x7f"), "x\x08 \x08");
        assert_eq!(feed(&mut s, "ce\r\n"), "ce\r\nPassword: ");
        let out = feed(&mut s, "secret\r");
        assert!(!out.contains("secret"));
        assert!(
            out.starts_with("\r\nLinux sim-vm-01 6.1.0-orchard-sim x86_64\r\n"),
            "{out}"
        );
        assert!(out.ends_with("alice@sim-vm-01:~$ "), "{out}");
        assert_eq!(s.user(), Some("alice"));
    }

    #[test]
    fn empty_password_is_refused_and_empty_login_reprompts() {
        let mut s = Session::new("m".into());
        assert_eq!(feed(&mut s, "\r"), "\r\nsim-vm-01 login: ");
        feed(&mut s, "bob\r");
        assert_eq!(
            feed(&mut s, "\r"),
            "\r\n\r\nLogin incorrect\r\nsim-vm-01 login: "
        );
        assert_eq!(s.user(), None);
    }

    #[test]
    fn commands() {
        let mut s = logged_in("root");
        assert_eq!(
            feed(&mut s, "whoami\r"),
            "whoami\r\nroot\r\nroot@sim-vm-01:~# "
        );
        assert_eq!(
            feed(&mut s, "uname -a\n"),
            "uname -a\r\nLinux sim-vm-01 6.1.0-orchard-sim x86_64 GNU/Linux\r\nroot@sim-vm-01:~# "
        );
        assert_eq!(
            feed(&mut s, "echo 'hello  world' $USER\r"),
            "echo 'hello  world' $USER\r\nhello  world root\r\nroot@sim-vm-01:~# "
        );
        let out = feed(&mut s, "uptime\r");
        assert!(
            out.contains(" 12:34:56 up 3 days,  2:01,  1 user,  load average: 0.50"),
            "{out}"
        );
        assert!(feed(&mut s, "date\r").contains("Thu May 23 12:34:56 UTC 2024\r\n"));
        assert!(feed(&mut s, "stty size\r").contains("\r\n24 80\r\n"));
        s.rows = 50;
        s.cols = 132;
        assert!(feed(&mut s, "stty size\r").contains("\r\n50 132\r\n"));
        assert!(feed(&mut s, "ls\r").contains("README  notes.txt"));
        assert!(feed(&mut s, "ls /\r").contains("etc  home"));
        assert!(feed(&mut s, "cat /etc/hostname\r").contains("\r\nsim-vm-01\r\n"));
        assert!(feed(&mut s, "hostname\r").contains("\r\nsim-vm-01\r\n"));
        assert!(feed(&mut s, "help\r").contains("stty size"));
        assert_eq!(
            feed(&mut s, "frobnicate --now\r"),
            "frobnicate --now\r\n-sh: frobnicate: command not found\r\nroot@sim-vm-01:~# "
        );
        assert_eq!(feed(&mut s, "\r"), "\r\nroot@sim-vm-01:~# ");
        let out = feed(&mut s, "exit\r");
        assert!(
            out.ends_with(
                "logout\r\n\r\nOrchard simulator \u{2014} sim-vm-01 ttyS0\r\n\r\nsim-vm-01 login: "
            ),
            "{out}"
        );
        assert_eq!(s.user(), None);
    }

    #[test]
    fn line_editing() {
        let mut s = logged_in("bob");
        // An arrow key is swallowed; Ctrl-U erases; backspace removes a whole UTF-8 char.
        assert_eq!(feed(&mut s, "ab\x1b[A"), "ab");
        assert_eq!(feed(&mut s, "\x15"), "\x08 \x08\x08 \x08");
        feed(&mut s, "echo h\u{e9}");
        feed(&mut s, "\x7f");
        assert!(feed(&mut s, "i\r").contains("\r\nhi\r\n"));
        assert_eq!(feed(&mut s, "junk\x03"), "junk^C\r\nbob@sim-vm-01:~$ ");
        assert!(feed(&mut s, "\x04").contains("logout"));
        assert_eq!(s.user(), None);
        // Over-long lines ring the bell instead of growing.
        let long = "x".repeat(MAX_LINE + 3);
        let out = feed(&mut s, &long);
        assert!(out.ends_with("\x07\x07\x07"));
    }

    #[test]
    fn banner_text() {
        assert_eq!(
            String::from_utf8(banner("t")).unwrap(),
            "\r\nOrchard simulator \u{2014} t ttyS0\r\n\r\nt login: "
        );
    }

    #[test]
    fn word_splitting() {
        assert_eq!(
            words(r#" a "b c"  d\ e 'f"g' "#),
            ["a", "b c", "d e", "f\"g"]
        );
        assert!(words("   ").is_empty());
    }
}
