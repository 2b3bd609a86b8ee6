//! Reading `csync2.cfg` files as csync2 2.0 reads them (its flex scanner `cfgfile_scanner.l`
//! and bison grammar `cfgfile_parser.y`, described in csync2's documentation), into a syntax
//! tree ([`Csync2Config`]) that keeps the place of every statement.
//!
//! The lexical rules, as csync2 has them:
//!
//! - `#` starts a comment up to the end of the line; whitespace separates words;
//! - `{ } ( ) ; : @` are tokens of their own; a double-quoted string runs to the next `"`
//!   (no escapes, newlines allowed) and is never a keyword;
//! - any other run of characters other than whitespace, `@ ; ( ) # "` is a word; a word does
//!   not end in `:` (so `host1:` is the word `host1` and a `:`), and a word that is exactly a
//!   keyword (`group`, `host`, `include`, ... `do-local-only`) is that keyword: csync2 reserves
//!   them everywhere, and quoting is the only way to use one as a name;
//! - `config FILE...;` reads other files in its place, wherever it appears (it is a lexical
//!   include). csync2 opens a relative FILE relative to its working directory; here it is
//!   relative to the directory of the file that names it. Includes nest at most
//!   [`MAX_INCLUDE_DEPTH`] deep (csync2's bound) and a file including itself is refused.
//!
//! The grammar is csync2's (`group [NAME] { ... }`, `prefix NAME { on HOST: PATH; ... }`,
//! `nossl FROM TO;`, `ignore uid|gid|mod...;`, `database`, `tempdir`, `lock-timeout`,
//! `no-cygwin-lowercase`; inside a group `host`, `include`, `exclude`, `compare`, `key`,
//! `auto`, `backup-directory`, `backup-generations`, and `action { pattern ...; exec ...;
//! logfile ...; do-local; do-local-only; }`), with two leniencies, since the goal is to carry
//! a working configuration over, not to judge it: a statement that begins with an unknown word
//! is kept as [`Statement`] (statements of csync2 forks, such as SSL settings) rather than
//! refused, and a stray `;` is skipped. What csync2 refuses as ambiguous (two `auto` settings
//! in a group, an unknown `auto` method, an unknown `ignore` property, a relative prefix path,
//! a `backup-generations` that is not a number) is refused with the file and line.
//!
//! Unnamed groups are named `group_1`, `group_2`, ... in file order, as csync2 names them;
//! host names are lower-cased, as csync2 does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::ImportError;

/// How deep `config` includes may nest (csync2's `MAX_INCLUDE_DEPTH`).
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// A place in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Rc<Path>,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub loc: Loc,
}

/// A whole csync2 configuration, includes resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csync2Config {
    /// The file named on the command line.
    pub file: PathBuf,
    /// The files read through `config` statements, in the order read.
    pub included: Vec<PathBuf>,
    pub groups: Vec<Group>,
    pub prefixes: Vec<Prefix>,
    /// Top-level statements other than `group` and `prefix` (`nossl`, `ignore`, `database`,
    /// `tempdir`, `lock-timeout`, `no-cygwin-lowercase`, unknown ones), in file order.
    pub globals: Vec<Statement>,
}

/// A statement kept as it was written: its first word and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub keyword: String,
    pub args: Vec<String>,
    /// Whether it was a `{ ... }` block rather than a `;`-terminated statement.
    pub block: bool,
    pub loc: Loc,
}

/// `group [NAME] { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The name written, or `group_N` for the N-th unnamed group.
    pub name: String,
    pub loc: Loc,
    /// In the order listed, over all `host` statements.
    pub hosts: Vec<Host>,
    pub keys: Vec<Located<String>>,
    /// `include`, `exclude` and `compare` patterns, in the order written.
    pub patterns: Vec<Pattern>,
    pub actions: Vec<Action>,
    pub backup_directory: Option<Located<String>>,
    pub backup_generations: Option<Located<u32>>,
    pub auto: Option<Located<Auto>>,
    /// Statements csync2 does not know, kept to say they were not carried over.
    pub unknown: Vec<Statement>,
}

/// One host of a `host` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host name (lower-cased), matched against the local hostname by csync2.
    pub name: String,
    /// `NAME@PEER`: the name used to reach it (lower-cased).
    pub peer: Option<String>,
    /// Written in parentheses: a slave, which only receives.
    pub slave: bool,
    pub loc: Loc,
}

/// Which list a pattern is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    Include,
    Exclude,
    /// `compare`: used only by csync2's compare mode (`-o`).
    Compare,
}

/// One pattern of an `include`, `exclude` or `compare` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub kind: PatternKind,
    /// As written, trailing slashes removed (as csync2 does).
    pub text: String,
    pub loc: Loc,
}

/// `action { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub loc: Loc,
    pub patterns: Vec<Located<String>>,
    pub execs: Vec<Located<String>>,
    pub logfile: Option<Located<String>>,
    pub do_local: bool,
    pub do_local_only: bool,
    pub unknown: Vec<Statement>,
}

/// The `auto` conflict resolution methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auto {
    None,
    First,
    Younger,
    Older,
    Bigger,
    Smaller,
    Left,
    Right,
}

impl Auto {
    fn parse(word: &str) -> Option<Auto> {
        Some(match word {
            "none" => Auto::None,
            "first" => Auto::First,
            "younger" => Auto::Younger,
            "older" => Auto::Older,
            "bigger" => Auto::Bigger,
            "smaller" => Auto::Smaller,
            "left" => Auto::Left,
            "right" => Auto::Right,
            _ => return None,
        })
    }
}

impl fmt::Display for Auto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auto::None => "none",
            Auto::First => "first",
            Auto::Younger => "younger",
            Auto::Older => "older",
            Auto::Bigger => "bigger",
            Auto::Smaller => "smaller",
            Auto::Left => "left",
            Auto::Right => "right",
        })
    }
}

/// `prefix NAME { on HOST: PATH; ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub name: String,
    pub loc: Loc,
    /// `(host pattern, absolute path)`, in order: the first entry whose pattern matches a
    /// host name (shell wildcards) gives that host's path.
    pub entries: Vec<(String, Located<String>)>,
}

/// Reads `path` and every file it includes.
pub fn read(path: &Path) -> Result<Csync2Config, ImportError> {
    let mut lexer = Lexer {
        tokens: Vec::new(),
        stack: Vec::new(),
        included: Vec::new(),
    };
    lexer.file(path, None)?;
    let mut parser = Parser {
        tokens: lexer.tokens,
        pos: 0,
        unnamed: 0,
        end: Loc {
            file: Rc::from(path),
            line: 1,
        },
    };
    let mut config = parser.config()?;
    config.file = path.to_path_buf();
    config.included = lexer.included;
    Ok(config)
}

/// Parses `text` as the file `path` (a `config` statement in it reads files from disk).
pub fn parse(text: &str, path: &Path) -> Result<Csync2Config, ImportError> {
    let mut lexer = Lexer {
        tokens: Vec::new(),
        stack: vec![path.to_path_buf()],
        included: Vec::new(),
    };
    lexer.text(text, Rc::from(path))?;
    let mut parser = Parser {
        tokens: lexer.tokens,
        pos: 0,
        unnamed: 0,
        end: Loc {
            file: Rc::from(path),
            line: text.lines().count().max(1),
        },
    };
    let mut config = parser.config()?;
    config.file = path.to_path_buf();
    config.included = lexer.included;
    Ok(config)
}

const KEYWORDS: &[&str] = &[
    "nossl",
    "ignore",
    "database",
    "group",
    "host",
    "exclude",
    "include",
    "compare",
    "key",
    "auto",
    "action",
    "pattern",
    "exec",
    "logfile",
    "do-local",
    "do-local-only",
    "prefix",
    "on",
    "lock-timeout",
    "tempdir",
    "backup-directory",
    "backup-generations",
    "no-cygwin-lowercase",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    LParen,
    RParen,
    Semi,
    Colon,
    At,
    Keyword(&'static str),
    /// A word or a quoted string.
    Str(String),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Open => f.write_str("'{'"),
            Tok::Close => f.write_str("'}'"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::Semi => f.write_str("';'"),
            Tok::Colon => f.write_str("':'"),
            Tok::At => f.write_str("'@'"),
            Tok::Keyword(k) => write!(f, "the keyword '{k}'"),
            Tok::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    loc: Loc,
}

struct Lexer {
    tokens: Vec<Token>,
    /// The files being read, outermost first (for the cycle check).
    stack: Vec<PathBuf>,
    included: Vec<PathBuf>,
}

fn syntax(loc: &Loc, message: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        file: loc.file.to_path_buf(),
        line: loc.line,
        message: message.into(),
    }
}

impl Lexer {
    /// Reads the file `path`, named by a `config` statement at `from` (or on the command line).
    fn file(&mut self, path: &Path, from: Option<&Loc>) -> Result<(), ImportError> {
        let text = std::fs::read(path).map_err(|source| match from {
            None => ImportError::Read {
                file: path.to_path_buf(),
                source,
            },
            Some(loc) => syntax(
                loc,
                format!(
                    "cannot read included config file {}: {source}",
                    path.display()
                ),
            ),
        })?;
        let text = String::from_utf8_lossy(&text);
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(loc) = from {
            if self.stack.contains(&canonical) {
                return Err(syntax(
                    loc,
                    format!(
                        "config file {} includes itself (through {})",
                        path.display(),
                        self.stack
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" -> ")
                    ),
                ));
            }
            if self.stack.len() > MAX_INCLUDE_DEPTH {
                return Err(syntax(
                    loc,
                    format!(
                        "config includes nested too deeply (more than {MAX_INCLUDE_DEPTH} levels)"
                    ),
                ));
            }
            self.included.push(path.to_path_buf());
        }
        self.stack.push(canonical);
        let r = self.text(&text, Rc::from(path));
        self.stack.pop();
        r
    }

    fn text(&mut self, text: &str, file: Rc<Path>) -> Result<(), ImportError> {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        let mut line = 1;
        let loc = |line: usize| Loc {
            file: file.clone(),
            line,
        };
        while i < chars.len() {
            let c = chars[i];
            match c {
                '\n' => {
                    line += 1;
                    i += 1;
                }
                ' ' | '\t' | '\r' => i += 1,
                '#' => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                }
                '"' => {
                    let start = line;
                    let mut s = String::new();
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => {
                                return Err(syntax(
                                    &loc(start),
                                    "unterminated string: a '\"' is missing",
                                ));
                            }
                            Some('"') => break,
                            Some(&ch) => {
                                if ch == '\n' {
                                    line += 1;
                                }
                                s.push(ch);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    self.push(Tok::Str(s), loc(start));
                }
                '(' | ')' | ';' | '@' => {
                    let tok = match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        ';' => Tok::Semi,
                        _ => Tok::At,
                    };
                    self.push(tok, loc(line));
                    i += 1;
                }
                _ => {
                    let start = i;
                    while i < chars.len() && !is_special(chars[i]) {
                        i += 1;
                    }
                    // A word does not end in ':'; a run of ':' alone is ':' tokens.
                    let mut end = i;
                    while end > start && chars[end - 1] == ':' {
                        end -= 1;
                    }
                    if end == start {
                        self.push(Tok::Colon, loc(line));
                        i = start + 1;
                        continue;
                    }
                    i = end;
                    let word: String = chars[start..end].iter().collect();
                    if word == "config" {
                        i = self.include(&chars, i, &mut line, &file)?;
                        continue;
                    }
                    let tok = match word.as_str() {
                        "{" => Tok::Open,
                        "}" => Tok::Close,
                        w => match KEYWORDS.iter().find(|k| **k == w) {
                            Some(k) => Tok::Keyword(k),
                            None => Tok::Str(word),
                        },
                    };
                    self.push(tok, loc(line));
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, tok: Tok, loc: Loc) {
        self.tokens.push(Token { tok, loc });
    }

    /// `config FILE...;` after the keyword at `i`: reads each file in place; returns the
    /// position after the `;`.
    fn include(
        &mut self,
        chars: &[char],
        mut i: usize,
        line: &mut usize,
        file: &Rc<Path>,
    ) -> Result<usize, ImportError> {
        let start = Loc {
            file: file.clone(),
            line: *line,
        };
        let mut names = 0;
        loop {
            match chars.get(i) {
                None => {
                    return Err(syntax(&start, "the config statement is not ended by ';'"));
                }
                Some(';') => {
                    if names == 0 {
                        return Err(syntax(&start, "the config statement names no file"));
                    }
                    return Ok(i + 1);
                }
                Some('\n') => {
                    *line += 1;
                    i += 1;
                }
                Some(c) if c.is_whitespace() => i += 1,
                Some(_) => {
                    let begin = i;
                    while i < chars.len() && !chars[i].is_whitespace() && chars[i] != ';' {
                        i += 1;
                    }
                    let raw: String = chars[begin..i].iter().collect();
                    let name = raw.trim_matches('"');
                    let here = Loc {
                        file: file.clone(),
                        line: *line,
                    };
                    let mut path = PathBuf::from(name);
                    if path.is_relative()
                        && let Some(dir) = file.parent()
                    {
                        path = dir.join(path);
                    }
                    self.file(&path, Some(&here))?;
                    names += 1;
                }
            }
        }
    }
}

fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '@' | ';' | '(' | ')' | '#' | '"')
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    unnamed: usize,
    /// Where the input ends, for "unexpected end of file".
    end: Loc,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn last_loc(&self) -> Loc {
        match self.pos.checked_sub(1).and_then(|p| self.tokens.get(p)) {
            Some(t) => t.loc.clone(),
            None => self.end.clone(),
        }
    }

    fn eof(&self, what: &str) -> ImportError {
        syntax(&self.last_loc(), format!("unexpected end of file {what}"))
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<Loc, ImportError> {
        match self.next() {
            Some(t) if &t.tok == want => Ok(t.loc),
            Some(t) => Err(syntax(
                &t.loc,
                format!("expected {want} {what}, found {}", t.tok),
            )),
            None => Err(self.eof(&format!("(expected {want} {what})"))),
        }
    }

    /// One word or quoted string.
    fn string(&mut self, what: &str) -> Result<Located<String>, ImportError> {
        match self.next() {
            Some(Token {
                tok: Tok::Str(s),
                loc,
            }) => Ok(Located { value: s, loc }),
            Some(t) => Err(syntax(
                &t.loc,
                format!("expected {what}, found {}{}", t.tok, reserved_hint(&t.tok)),
            )),
            None => Err(self.eof(&format!("(expected {what})"))),
        }
    }

    /// Words up to the `;` that ends statement `stmt`.
    fn strings_to_semi(&mut self, stmt: &str) -> Result<Vec<Located<String>>, ImportError> {
        let mut out = Vec::new();
        loop {
            match self.next() {
                Some(Token {
                    tok: Tok::Str(s),
                    loc,
                }) => out.push(Located { value: s, loc }),
                Some(Token { tok: Tok::Semi, .. }) => return Ok(out),
                Some(t) => {
                    return Err(syntax(
                        &t.loc,
                        format!(
                            "expected ';' to end the {stmt} statement, found {}{}",
                            t.tok,
                            reserved_hint(&t.tok)
                        ),
                    ));
                }
                None => {
                    return Err(self.eof(&format!("in the {stmt} statement (a ';' is missing)")));
                }
            }
        }
    }

    /// An unknown statement starting with the word `first`: up to its `;`, or a `{...}` block.
    fn unknown(&mut self, first: Located<String>) -> Result<Statement, ImportError> {
        let mut args = Vec::new();
        let mut depth = 0usize;
        let mut block = false;
        loop {
            let Some(t) = self.next() else {
                return Err(self.eof(&format!("in the statement starting with {:?}", first.value)));
            };
            match t.tok {
                Tok::Semi if depth == 0 => break,
                Tok::Open => {
                    depth += 1;
                    block = true;
                }
                Tok::Close if depth == 0 => {
                    return Err(syntax(
                        &t.loc,
                        format!(
                            "expected ';' to end the statement starting with {:?}, found '}}'",
                            first.value
                        ),
                    ));
                }
                Tok::Close => {
                    depth -= 1;
                    if depth == 0 {
                        if matches!(self.peek(), Some(Token { tok: Tok::Semi, .. })) {
                            self.pos += 1;
                        }
                        break;
                    }
                }
                Tok::Str(s) => args.push(s),
                Tok::Keyword(k) => args.push(k.to_owned()),
                _ => {}
            }
        }
        Ok(Statement {
            keyword: first.value,
            args,
            block,
            loc: first.loc,
        })
    }

    fn config(&mut self) -> Result<Csync2Config, ImportError> {
        let mut config = Csync2Config {
            file: PathBuf::new(),
            included: Vec::new(),
            groups: Vec::new(),
            prefixes: Vec::new(),
            globals: Vec::new(),
        };
        while let Some(t) = self.next() {
            let loc = t.loc.clone();
            match t.tok {
                Tok::Keyword("group") => {
                    let g = self.group(loc)?;
                    config.groups.push(g);
                }
                Tok::Keyword("prefix") => {
                    let p = self.prefix(loc)?;
                    config.prefixes.push(p);
                }
                Tok::Keyword("nossl") => {
                    let from = self.string("the source host pattern of nossl")?;
                    let to = self.string("the destination host pattern of nossl")?;
                    self.expect(&Tok::Semi, "to end the nossl statement")?;
                    config.globals.push(Statement {
                        keyword: "nossl".into(),
                        args: vec![from.value, to.value],
                        block: false,
                        loc,
                    });
                }
                Tok::Keyword("ignore") => {
                    let args = self.strings_to_semi("ignore")?;
                    for a in &args {
                        if !matches!(a.value.as_str(), "uid" | "gid" | "mod") {
                            return Err(syntax(
                                &a.loc,
                                format!(
                                    "unknown ignore property {:?}; valid: uid, gid, mod",
                                    a.value
                                ),
                            ));
                        }
                    }
                    config.globals.push(Statement {
                        keyword: "ignore".into(),
                        args: args.into_iter().map(|a| a.value).collect(),
                        block: false,
                        loc,
                    });
                }
                Tok::Keyword(k @ ("database" | "tempdir" | "lock-timeout")) => {
                    let v = self.string(&format!("the value of {k}"))?;
                    self.expect(&Tok::Semi, &format!("to end the {k} statement"))?;
                    config.globals.push(Statement {
                        keyword: k.into(),
                        args: vec![v.value],
                        block: false,
                        loc,
                    });
                }
                Tok::Keyword("no-cygwin-lowercase") => {
                    self.expect(&Tok::Semi, "to end the no-cygwin-lowercase statement")?;
                    config.globals.push(Statement {
                        keyword: "no-cygwin-lowercase".into(),
                        args: Vec::new(),
                        block: false,
                        loc,
                    });
                }
                Tok::Str(word) => {
                    let s = self.unknown(Located { value: word, loc })?;
                    config.globals.push(s);
                }
                Tok::Semi => {}
                Tok::Keyword(k) => {
                    return Err(syntax(
                        &loc,
                        format!("'{k}' is only allowed inside a group or action block"),
                    ));
                }
                Tok::Close => {
                    return Err(syntax(&loc, "unexpected '}': no block is open"));
                }
                other => {
                    return Err(syntax(
                        &loc,
                        format!("expected a statement (group, prefix, nossl, ...), found {other}"),
                    ));
                }
            }
        }
        Ok(config)
    }

    fn group(&mut self, loc: Loc) -> Result<Group, ImportError> {
        let name = match self.peek() {
            Some(Token {
                tok: Tok::Str(_), ..
            }) => self.string("the group name")?.value,
            _ => {
                self.unnamed += 1;
                format!("group_{}", self.unnamed)
            }
        };
        self.expect(&Tok::Open, &format!("to open group {name:?}"))?;
        let mut g = Group {
            name,
            loc,
            hosts: Vec::new(),
            keys: Vec::new(),
            patterns: Vec::new(),
            actions: Vec::new(),
            backup_directory: None,
            backup_generations: None,
            auto: None,
            unknown: Vec::new(),
        };
        loop {
            let Some(t) = self.next() else {
                return Err(self.eof(&format!("in group {:?} (a '}}' is missing)", g.name)));
            };
            let loc = t.loc.clone();
            match t.tok {
                Tok::Close => return Ok(g),
                Tok::Semi => {}
                Tok::Keyword("host") => self.hosts(&mut g)?,
                Tok::Keyword(k @ ("include" | "exclude" | "compare")) => {
                    let kind = match k {
                        "include" => PatternKind::Include,
                        "exclude" => PatternKind::Exclude,
                        _ => PatternKind::Compare,
                    };
                    for p in self.strings_to_semi(k)? {
                        g.patterns.push(Pattern {
                            kind,
                            text: strip_trailing_slashes(&p.value),
                            loc: p.loc,
                        });
                    }
                }
                Tok::Keyword("key") => {
                    let key = self.string("the key file name")?;
                    self.expect(&Tok::Semi, "after the key file name")?;
                    g.keys.push(key);
                }
                Tok::Keyword("auto") => {
                    let method = self.string("an auto method")?;
                    self.expect(&Tok::Semi, "after the auto method")?;
                    if g.auto.is_some() {
                        return Err(syntax(
                            &method.loc,
                            format!(
                                "group {:?} has a second auto setting; csync2 allows one",
                                g.name
                            ),
                        ));
                    }
                    let Some(auto) = Auto::parse(&method.value) else {
                        return Err(syntax(
                            &method.loc,
                            format!(
                                "unknown auto method {:?}; valid: none, first, younger, older, \
                                 bigger, smaller, left, right",
                                method.value
                            ),
                        ));
                    };
                    g.auto = Some(Located {
                        value: auto,
                        loc: method.loc,
                    });
                }
                Tok::Keyword("backup-directory") => {
                    let dir = self.string("the backup directory")?;
                    self.expect(&Tok::Semi, "after the backup directory")?;
                    g.backup_directory = Some(dir);
                }
                Tok::Keyword("backup-generations") => {
                    let n = self.string("the number of backup generations")?;
                    self.expect(&Tok::Semi, "after the number of backup generations")?;
                    let Ok(value) = n.value.parse::<u32>() else {
                        return Err(syntax(
                            &n.loc,
                            format!("backup-generations needs a number, found {:?}", n.value),
                        ));
                    };
                    g.backup_generations = Some(Located { value, loc: n.loc });
                }
                Tok::Keyword("action") => {
                    let a = self.action(loc)?;
                    g.actions.push(a);
                }
                Tok::Str(word) => {
                    let s = self.unknown(Located { value: word, loc })?;
                    g.unknown.push(s);
                }
                Tok::Keyword(k) => {
                    return Err(syntax(
                        &loc,
                        format!("'{k}' is not allowed inside group {:?}", g.name),
                    ));
                }
                other => {
                    return Err(syntax(
                        &loc,
                        format!("expected a statement of group {:?}, found {other}", g.name),
                    ));
                }
            }
        }
    }

    /// `host a b@c (d e@f) g;` after the keyword.
    fn hosts(&mut self, g: &mut Group) -> Result<(), ImportError> {
        let mut slave = false;
        loop {
            let Some(t) = self.next() else {
                return Err(self.eof("in the host statement (a ';' is missing)"));
            };
            match t.tok {
                Tok::Semi if !slave => return Ok(()),
                Tok::LParen if !slave => slave = true,
                Tok::RParen if slave => slave = false,
                Tok::Str(name) => {
                    let peer = if matches!(self.peek(), Some(Token { tok: Tok::At, .. })) {
                        self.pos += 1;
                        Some(self.string("the host's interface name after '@'")?.value)
                    } else {
                        None
                    };
                    g.hosts.push(Host {
                        name: name.to_lowercase(),
                        peer: peer.map(|p| p.to_lowercase()),
                        slave,
                        loc: t.loc,
                    });
                }
                other => {
                    let hint = match (&other, slave) {
                        (Tok::Semi, true) => " (a ')' is missing)",
                        (Tok::LParen, true) => " (parentheses do not nest)",
                        (Tok::RParen, false) => " (no '(' is open)",
                        _ => "",
                    };
                    return Err(syntax(
                        &t.loc,
                        format!(
                            "expected a host name or ';' in the host statement, found {other}{hint}{}",
                            reserved_hint(&other)
                        ),
                    ));
                }
            }
        }
    }

    fn action(&mut self, loc: Loc) -> Result<Action, ImportError> {
        self.expect(&Tok::Open, "after 'action'")?;
        let mut a = Action {
            loc,
            patterns: Vec::new(),
            execs: Vec::new(),
            logfile: None,
            do_local: false,
            do_local_only: false,
            unknown: Vec::new(),
        };
        loop {
            let Some(t) = self.next() else {
                return Err(self.eof("in an action block (a '}' is missing)"));
            };
            let loc = t.loc.clone();
            match t.tok {
                Tok::Close => {
                    // csync2 takes no ';' after an action block; one is harmless.
                    if matches!(self.peek(), Some(Token { tok: Tok::Semi, .. })) {
                        self.pos += 1;
                    }
                    return Ok(a);
                }
                Tok::Semi => {}
                Tok::Keyword("pattern") => a.patterns.extend(self.strings_to_semi("pattern")?),
                Tok::Keyword("exec") => a.execs.extend(self.strings_to_semi("exec")?),
                Tok::Keyword("logfile") => {
                    let l = self.string("the log file name")?;
                    self.expect(&Tok::Semi, "after the log file name")?;
                    a.logfile = Some(l);
                }
                Tok::Keyword("do-local") => {
                    self.expect(&Tok::Semi, "after do-local")?;
                    a.do_local = true;
                }
                Tok::Keyword("do-local-only") => {
                    self.expect(&Tok::Semi, "after do-local-only")?;
                    a.do_local = true;
                    a.do_local_only = true;
                }
                Tok::Str(word) => {
                    let s = self.unknown(Located { value: word, loc })?;
                    a.unknown.push(s);
                }
                Tok::Keyword(k) => {
                    return Err(syntax(
                        &loc,
                        format!("'{k}' is not allowed inside an action block"),
                    ));
                }
                other => {
                    return Err(syntax(
                        &loc,
                        format!("expected a statement of an action block, found {other}"),
                    ));
                }
            }
        }
    }

    fn prefix(&mut self, loc: Loc) -> Result<Prefix, ImportError> {
        let name = self.string("the prefix name")?.value;
        self.expect(&Tok::Open, &format!("to open prefix {name:?}"))?;
        let mut p = Prefix {
            name,
            loc,
            entries: Vec::new(),
        };
        loop {
            let Some(t) = self.next() else {
                return Err(self.eof(&format!("in prefix {:?} (a '}}' is missing)", p.name)));
            };
            match t.tok {
                Tok::Close => return Ok(p),
                Tok::Keyword("on") => {
                    let host = self.string("a host pattern after 'on'")?;
                    self.expect(&Tok::Colon, "after the host pattern")?;
                    let path = self.string("the prefix path")?;
                    self.expect(&Tok::Semi, "after the prefix path")?;
                    if !path.value.starts_with('/') {
                        return Err(syntax(
                            &path.loc,
                            format!("prefix path {:?} is not an absolute path", path.value),
                        ));
                    }
                    let value = strip_trailing_slashes(&path.value);
                    p.entries.push((
                        host.value.to_lowercase(),
                        Located {
                            value,
                            loc: path.loc,
                        },
                    ));
                }
                other => {
                    return Err(syntax(
                        &t.loc,
                        format!(
                            "expected 'on HOST: PATH;' or '}}' in prefix {:?}, found {other}",
                            p.name
                        ),
                    ));
                }
            }
        }
    }
}

/// csync2 removes trailing slashes from patterns and prefix paths (keeping `/` itself).
fn strip_trailing_slashes(s: &str) -> String {
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() && !s.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn reserved_hint(tok: &Tok) -> String {
    match tok {
        Tok::Keyword(k) => {
            format!(" (csync2 reserves the word '{k}'; write \"{k}\" to use it as a name)")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Csync2Config {
        match parse(text, Path::new("/etc/csync2.cfg")) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}\n--- input:\n{text}"),
        }
    }

    #[track_caller]
    fn parse_err(text: &str, line: usize, fragment: &str) {
        match parse(text, Path::new("/etc/csync2.cfg")) {
            Ok(c) => panic!("expected an error, got {c:#?}"),
            Err(ImportError::Syntax {
                file,
                line: l,
                message,
            }) => {
                assert_eq!(file, Path::new("/etc/csync2.cfg"));
                assert_eq!(l, line, "{message}");
                assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
            }
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    #[test]
    fn every_statement_of_a_group() {
        let c = parse_text(
            r#"# comment
group www   # trailing comment
{
    host web1 web2@web2-eth1 (web3 "web4"@web4-sync);
    host web5;
    key /etc/csync2.key_www;
    include /var/www/ "/etc/nginx/sites enabled/";
    exclude *~ .* /var/www/cache;
    compare /etc/passwd;
    action {
        pattern /etc/nginx/*;
        pattern /etc/nginx/nginx.conf;
        exec "/usr/sbin/nginx -t && systemctl reload nginx";
        exec "touch %%";
        logfile "/var/log/csync2_action.log";
        do-local;
    }
    action
    {
        exec /bin/true;
        do-local-only;
    }
    backup-directory /var/backups/csync2;
    backup-generations 5;
    auto younger;
}
"#,
        );
        assert_eq!(c.groups.len(), 1);
        let g = &c.groups[0];
        assert_eq!(g.name, "www");
        assert_eq!(g.loc.line, 2);
        let hosts: Vec<(&str, Option<&str>, bool, usize)> = g
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.peer.as_deref(), h.slave, h.loc.line))
            .collect();
        assert_eq!(
            hosts,
            [
                ("web1", None, false, 4),
                ("web2", Some("web2-eth1"), false, 4),
                ("web3", None, true, 4),
                ("web4", Some("web4-sync"), true, 4),
                ("web5", None, false, 5),
            ]
        );
        assert_eq!(g.keys[0].value, "/etc/csync2.key_www");
        let pats: Vec<(PatternKind, &str)> = g
            .patterns
            .iter()
            .map(|p| (p.kind, p.text.as_str()))
            .collect();
        assert_eq!(
            pats,
            [
                (PatternKind::Include, "/var/www"),
                (PatternKind::Include, "/etc/nginx/sites enabled"),
                (PatternKind::Exclude, "*~"),
                (PatternKind::Exclude, ".*"),
                (PatternKind::Exclude, "/var/www/cache"),
                (PatternKind::Compare, "/etc/passwd"),
            ]
        );
        assert_eq!(g.actions.len(), 2);
        let a = &g.actions[0];
        assert_eq!(a.loc.line, 10);
        assert_eq!(
            a.patterns
                .iter()
                .map(|p| p.value.as_str())
                .collect::<Vec<_>>(),
            ["/etc/nginx/*", "/etc/nginx/nginx.conf"]
        );
        assert_eq!(
            a.execs.iter().map(|p| p.value.as_str()).collect::<Vec<_>>(),
            ["/usr/sbin/nginx -t && systemctl reload nginx", "touch %%"]
        );
        assert_eq!(
            a.logfile.as_ref().unwrap().value,
            "/var/log/csync2_action.log"
        );
        assert!(a.do_local && !a.do_local_only);
        let b = &g.actions[1];
        assert!(b.do_local && b.do_local_only);
        assert!(b.patterns.is_empty());
        assert_eq!(
            g.backup_directory.as_ref().unwrap().value,
            "/var/backups/csync2"
        );
        assert_eq!(g.backup_generations.as_ref().unwrap().value, 5);
        assert_eq!(g.auto.as_ref().unwrap().value, Auto::Younger);
        assert_eq!(g.auto.as_ref().unwrap().loc.line, 25);
    }

    #[test]
    fn top_level_statements() {
        let c = parse_text(
            "nossl * *;\nignore uid mod;\ndatabase /var/lib/csync2/x.db;\ntempdir /tmp;\nlock-timeout 30;\nno-cygwin-lowercase;\n\
             prefix homedir\n{\n  on host[12]: /export/users/;\n  on *:        /home;\n}\n\
             group { host a; include %homedir%/bob; }\ngroup { host b; }\n\
             ssl_cert /etc/x.pem;\nfuture { thing 1; }\n",
        );
        let g: Vec<(&str, Vec<&str>, usize)> = c
            .globals
            .iter()
            .map(|s| {
                (
                    s.keyword.as_str(),
                    s.args.iter().map(String::as_str).collect(),
                    s.loc.line,
                )
            })
            .collect();
        assert_eq!(
            g,
            [
                ("nossl", vec!["*", "*"], 1),
                ("ignore", vec!["uid", "mod"], 2),
                ("database", vec!["/var/lib/csync2/x.db"], 3),
                ("tempdir", vec!["/tmp"], 4),
                ("lock-timeout", vec!["30"], 5),
                ("no-cygwin-lowercase", vec![], 6),
                ("ssl_cert", vec!["/etc/x.pem"], 14),
                ("future", vec!["thing", "1"], 15),
            ]
        );
        assert!(c.globals[7].block);
        let p = &c.prefixes[0];
        assert_eq!(p.name, "homedir");
        assert_eq!(
            p.entries
                .iter()
                .map(|(h, v)| (h.as_str(), v.value.as_str(), v.loc.line))
                .collect::<Vec<_>>(),
            [("host[12]", "/export/users", 9), ("*", "/home", 10)]
        );
        assert_eq!(
            c.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["group_1", "group_2"]
        );
        assert_eq!(c.groups[0].patterns[0].text, "%homedir%/bob");
    }

    #[test]
    fn words_as_csync2_scans_them() {
        // A word does not end in ':'; '{' glued to a word is part of it; keywords are
        // reserved unless quoted; host names are lower-cased.
        let c = parse_text(
            "group \"group\" { host Web1 \"include\"; include /a:b /x{y}; }\nprefix p { on web1:  /srv; }\n",
        );
        let g = &c.groups[0];
        assert_eq!(g.name, "group");
        assert_eq!(
            g.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
            ["web1", "include"]
        );
        assert_eq!(g.patterns[0].text, "/a:b");
        assert_eq!(g.patterns[1].text, "/x{y}");
        assert_eq!(c.prefixes[0].entries[0].0, "web1");
        assert_eq!(c.prefixes[0].entries[0].1.value, "/srv");
        // A multi-line quoted string keeps its newline and its first line.
        let c = parse_text("group g {\n host a;\n action { exec \"a\nb\"; }\n}\n");
        assert_eq!(c.groups[0].actions[0].execs[0].value, "a\nb");
        assert_eq!(c.groups[0].actions[0].execs[0].loc.line, 3);
    }

    #[test]
    fn errors_carry_file_and_line() {
        parse_err(
            "group g {\n host a b\n}\n",
            3,
            "expected a host name or ';' in the host statement, found '}'",
        );
        parse_err("group g {\n host a (b;\n}\n", 2, "a ')' is missing");
        parse_err("group g {\n host a b);\n}\n", 2, "no '(' is open");
        parse_err(
            "group g {\n host a;\n include /a\n",
            3,
            "unexpected end of file in the include statement",
        );
        parse_err(
            "group g {\n host a;\n",
            2,
            "unexpected end of file in group \"g\" (a '}' is missing)",
        );
        parse_err(
            "group g {\n auto newer;\n}\n",
            2,
            "unknown auto method \"newer\"",
        );
        parse_err(
            "group g {\n auto none;\n auto left;\n}\n",
            3,
            "second auto setting",
        );
        parse_err(
            "group g {\n backup-generations many;\n}\n",
            2,
            "needs a number",
        );
        parse_err(
            "group g {\n key a b;\n}\n",
            2,
            "expected ';' after the key file name, found \"b\"",
        );
        parse_err(
            "group g {\n exclude key;\n}\n",
            2,
            "csync2 reserves the word 'key'",
        );
        parse_err("\n\nhost a;\n", 3, "'host' is only allowed inside a group");
        parse_err("}\n", 1, "no block is open");
        parse_err(
            "prefix p {\n on a /x;\n}\n",
            2,
            "expected ':' after the host pattern",
        );
        // csync2 reads `web1:/srv` as one word: a space must follow the ':'.
        parse_err(
            "prefix p {\n on web1:/srv;\n}\n",
            2,
            "expected ':' after the host pattern, found ';'",
        );
        parse_err("prefix p {\n on a: x;\n}\n", 2, "not an absolute path");
        parse_err("ignore uid size;\n", 1, "unknown ignore property \"size\"");
        parse_err(
            "group g {\n action { exec \"x; }\n}\n",
            2,
            "unterminated string",
        );
        parse_err(
            "group g {\n group h { }\n}\n",
            2,
            "'group' is not allowed inside group \"g\"",
        );
        parse_err(
            "group g {\n action { host a; }\n}\n",
            2,
            "not allowed inside an action block",
        );
        parse_err(
            "nossl *;\n",
            1,
            "expected the destination host pattern of nossl, found ';'",
        );
    }

    #[test]
    fn config_includes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("csync2.d")).unwrap();
        std::fs::write(
            d.join("csync2.cfg"),
            "# main\nconfig csync2.d/www.cfg csync2.d/etc.cfg;\nnossl * *;\n",
        )
        .unwrap();
        std::fs::write(
            d.join("csync2.d/www.cfg"),
            "group www {\n host a b;\n config hosts.cfg;\n include /var/www;\n}\n",
        )
        .unwrap();
        std::fs::write(d.join("csync2.d/hosts.cfg"), "host c;\n").unwrap();
        std::fs::write(
            d.join("csync2.d/etc.cfg"),
            "\ngroup etc { host a; include /etc/x; }\n",
        )
        .unwrap();
        let c = read(&d.join("csync2.cfg")).unwrap();
        assert_eq!(c.groups.len(), 2);
        assert_eq!(
            c.groups[0]
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            c.groups[0].hosts[2].loc.file.as_ref(),
            d.join("csync2.d/hosts.cfg")
        );
        assert_eq!(c.groups[1].loc.line, 2);
        assert_eq!(c.globals[0].loc.line, 3);
        assert_eq!(c.included.len(), 3);

        // A cycle, and a missing file, are errors at the config statement.
        std::fs::write(d.join("loop.cfg"), "\nconfig loop2.cfg;\n").unwrap();
        std::fs::write(d.join("loop2.cfg"), "config loop.cfg;\n").unwrap();
        let Err(ImportError::Syntax {
            file,
            line,
            message,
        }) = read(&d.join("loop.cfg"))
        else {
            panic!("a cycle must be refused");
        };
        assert_eq!((file, line), (d.join("loop2.cfg"), 1));
        assert!(message.contains("includes itself"), "{message}");
        std::fs::write(
            d.join("missing.cfg"),
            "group g { host a; }\nconfig nothere.cfg;\n",
        )
        .unwrap();
        let Err(ImportError::Syntax { line, message, .. }) = read(&d.join("missing.cfg")) else {
            panic!("a missing include must be refused");
        };
        assert_eq!(line, 2);
        assert!(
            message.contains("cannot read included config file"),
            "{message}"
        );
        std::fs::write(d.join("x.cfg"), "").unwrap();
        std::fs::write(d.join("open.cfg"), "config x.cfg").unwrap();
        let Err(ImportError::Syntax { message, .. }) = read(&d.join("open.cfg")) else {
            panic!("an unended config statement must be refused");
        };
        assert!(message.contains("not ended by ';'"), "{message}");
        // Too deep: a chain of 12 files.
        for i in 0..12 {
            std::fs::write(
                d.join(format!("deep{i}.cfg")),
                format!("config deep{}.cfg;\n", i + 1),
            )
            .unwrap();
        }
        std::fs::write(d.join("deep12.cfg"), "").unwrap();
        let Err(ImportError::Syntax { message, .. }) = read(&d.join("deep0.cfg")) else {
            panic!("too deep includes must be refused");
        };
        assert!(message.contains("nested too deeply"), "{message}");
        assert!(matches!(
            read(&d.join("none.cfg")),
            Err(ImportError::Read { .. })
        ));
    }
}
