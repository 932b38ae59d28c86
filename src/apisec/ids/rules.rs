//! The pattern rules of every family except the SQL lexer (see `sqli.rs`).
//!
//! Each rule is a regular expression over one form of a decoded value
//! (`folded`: lower-cased, blanks collapsed; `squeezed`: also without any
//! blank; `text`: case kept) and applies to some kinds of location. The
//! rules describe attack grammar — a tag with an event handler, a command
//! after a shell separator, a path that climbs directories — not single
//! words, so ordinary English in a parameter does not match. All rules of
//! one form run as one `RegexSet` pass.

use std::sync::LazyLock;

use regex::RegexSet;

use super::Family;

/// Where a value sits; rules choose the kinds they apply to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// The whole decoded path.
    Path,
    /// A parameter, cookie or JSON key name.
    Name,
    /// A parameter, cookie, path segment, form, XML or JSON value.
    Value,
    /// A header value (not credentials).
    Header,
    /// An uploaded file's name (multipart `filename`, `X-Filename` headers).
    Filename,
}

impl Kind {
    fn bit(self) -> u8 {
        match self {
            Kind::Path => 1,
            Kind::Name => 2,
            Kind::Value => 4,
            Kind::Header => 8,
            Kind::Filename => 16,
        }
    }

    /// The kind's place in [`KINDS`] (listed in the order of their bits).
    fn slot(self) -> usize {
        self.bit().trailing_zeros() as usize
    }
}

const P: u8 = 1;
const N: u8 = 2;
const V: u8 = 4;
const H: u8 = 8;
const F: u8 = 16;
const ANY: u8 = N | V | H | F;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Folded,
    Squeezed,
    Text,
}

struct Rule {
    family: Family,
    id: &'static str,
    form: Form,
    kinds: u8,
    re: &'static str,
}

const fn r(family: Family, id: &'static str, kinds: u8, re: &'static str) -> Rule {
    Rule {
        family,
        id,
        form: Form::Folded,
        kinds,
        re,
    }
}
const fn sq(family: Family, id: &'static str, kinds: u8, re: &'static str) -> Rule {
    Rule {
        family,
        id,
        form: Form::Squeezed,
        kinds,
        re,
    }
}
const fn tx(family: Family, id: &'static str, kinds: u8, re: &'static str) -> Rule {
    Rule {
        family,
        id,
        form: Form::Text,
        kinds,
        re,
    }
}

use Family::{Generic, Java, Lfi, Nodejs, Php, Rce, Rfi, Session, Sqli, Xss};

/// A PHP comment: `/* … */` (across lines), `# …` or `// …` up to a newline.
macro_rules! php_comment {
    () => {
        r"/\*(?s:.*?)\*/|#[^\n]*\n|//[^\n]*\n"
    };
}

/// What PHP lets stand between two tokens: blanks and comments, any number.
macro_rules! php_gap {
    () => {
        concat!(r"(\s|", php_comment!(), ")*")
    };
}

/// Command and tool names with no ordinary-English meaning.
const DISTINCT_CMDS: &str = r"whoami|ifconfig|ipconfig|uname|netstat|nslookup|wget|curl|nc|ncat|netcat|nmap|telnet|bash|zsh|ksh|csh|tcsh|dash|sh|powershell|pwsh|cmd|python[23]?(\.\d+)?|perl|ruby|php|node|lua|gcc|cc|c89|c99|busybox|socat|mkfifo|mknod|chmod|chown|chgrp|useradd|adduser|usermod|userdel|passwd|crontab|systemctl|nohup|strace|ltrace|gdb|tcpdump|tshark|lsof|traceroute|ping|base64|xxd|hexdump|certutil|bitsadmin|mshta|rundll32|regsvr32|wmic|cscript|wscript|schtasks|tasklist|taskkill|systeminfo|vssadmin|bcdedit|bcdboot|ansible(-[a-z]+)?|chef(-[a-z]+)?|cscli|pipx|pip3?|npm|npx|docker|kubectl|sshpass|scp|sftp|rsync|tftp|ftp|lwp-[a-z]+|aria2c|gunzip|bunzip2|unzip|zcat|bzcat|xzcat|tar|bsdtar|cpulimit|perf|xargs|awk|gawk|sed|grep|egrep|fgrep|vi|vim|nano|rmt|iptables|sudo|doas|pkexec|printenv|getent|hostname|uptime|dmesg|journalctl|lastlog|lastlogin|ssh|ssh-[a-z-]+|openssl|mysql|psql|sqlite3|regedit|icacls|takeown|ionice|setsid|chroot|unshare|nsenter|runuser|visudo|groupadd|aa-[a-z]+|lsmod|dmidecode|arp|blkid|hostnamectl|sysctl|pgrep|lsb_release|getcap|setcap|chattr|lsattr|lscpu|vmstat|iostat|fdisk|modprobe|insmod|rmmod|pstree|tmux|jq|gpg|7z|unrar|cpio|tclsh|irb|stdbuf|taskset|reboot|poweroff|xterm|findstr|netsh|wevtutil|msiexec|reg\.exe|finger|rcp|rlogin|rsh|whois|ps|id|ls|ll|cat|rm|cp|mv|pkill|killall|mkdir|rmdir|dd|df|du|umount|wc|tee|readlink|whereis|htop|nl|tac|shred|iwr|iex|column|comm|trap|env|dig";

/// Command names that are also English words: only flagged with a
/// shell-shaped argument.
const COMMON_CMDS: &str = r"kill|echo|printf|sleep|touch|mount|head|tail|more|less|sort|uniq|cut|tr|find|locate|which|file|stat|ln|time|who|w|last|date|top|free|alias|eval|exec|source|export|set|unset|type|call|start|copy|del|dir|ver|tree|attrib|pwd|cd|wall|od|strings|diff|rev|install|make|at|host|timeout|nice|reg|net|ip|ss|script|watch|screen|man|git|zip|java|sc|halt|flock|su";

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let cmds = DISTINCT_CMDS;
    let leaked = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        // ---- cross-site scripting
        r(Xss, "xss-script-tag", ANY, r"<\s*/?\s*script\b|<script$"),
        r(
            Xss,
            "xss-tag-event",
            ANY,
            r"<[a-z][\w:-]*[^>]*[\s/'\x22]on[a-z]{3,24}\s*=",
        ),
        // an attribute break then any handler (`" onbeforetoggle=`): the
        // list below is closed, browsers add events every year
        r(
            Xss,
            "xss-event-attr",
            ANY,
            r"['\x22`][\s/]+on[a-z]{4,40}\s*=",
        ),
        r(
            Xss,
            "xss-event-attr",
            ANY,
            r"(^|[\s'\x22/;>`])on(load|error|click|dblclick|mouse[a-z]+|focus[a-z]*|blur|select|change|submit|reset|key[a-z]+|input|abort|animation[a-z]+|transition[a-z]+|begin|end|toggle|pointer[a-z]+|drag[a-z]*|drop|wheel|scroll|resize|unload|beforeunload|hashchange|message|pageshow|pagehide|start|finish|copy|paste|cut|contextmenu|auxclick|show|invalid|search|play|pause|ended|loadstart|loadend|progress|readystatechange|afterprint|beforeprint|popstate|storage|touch[a-z]+|formdata|securitypolicyviolation|bounce|repeat|activate|beforeactivate|deactivate|filterchange|propertychange|help|cellchange|dataavailable|rowenter|rowexit|scrollend)\s*=",
        ),
        sq(
            Xss,
            "xss-script-uri",
            ANY,
            r"(java|vb|live|ecma)script:|mocha:",
        ),
        r(
            Xss,
            "xss-data-uri",
            ANY,
            r"data:\s*(text/(html|javascript|xml)|application/(x-)?(javascript|xhtml)|image/svg)|\b(src|href|data|action)\s*=\s*['\x22]?\s*data:",
        ),
        sq(
            Xss,
            "xss-dangerous-tag",
            ANY,
            r"<(iframe|frame|frameset|embed|object|applet|meta|link|base|style|svg|math|form|isindex|xss|vmlframe|v:[a-z]+|[a-z]+:script|body|img|image|video|audio|source|marquee|details|dialog|template|import|bgsound|layer|ilayer|keygen|textarea|xmp|noscript|plaintext|html|input|button|select|option|animate|set|handler|listener|param|portal|title|xml)([\s/>]|$)|<(a|div|p|span|table|td|font|b|i|u)\b[^>]*\b(href|src|style|id|class)=",
        ),
        // the same tags on the folded form, where blanks still end the
        // tag's name (`<applet code=x>` is `<appletcode=x>` squeezed)
        r(
            Xss,
            "xss-dangerous-tag",
            ANY,
            r"<(iframe|frame|frameset|embed|object|applet|meta|link|base|style|svg|math|form|isindex|xss|vmlframe|v:[a-z]+|[a-z]+:script|body|img|image|video|audio|source|marquee|details|dialog|template|import|bgsound|layer|ilayer|keygen|textarea|xmp|noscript|plaintext|html|input|button|select|option|animate|set|handler|listener|param|portal|title|xml)([\s/>]|$)|<(a|div|p|span|table|td|font|b|i|u)\s[^>]*\b(href|src|style|id|class)\s*=",
        ),
        r(
            Xss,
            "xss-tag-attr",
            ANY,
            r"<[a-z][\w:-]*\s+[^>]*\b(href|src|style|formaction|xmlns(:[a-z]+)?|background|dynsrc|lowsrc|srcdoc|xlink:href|language|http-equiv|implementation)\s*=",
        ),
        r(
            Xss,
            "xss-css-expression",
            ANY,
            r"expression\s*\(|-moz-binding|\bbehavior\s*:|@im\\?port\b|url\s*\(\s*['\x22]?\s*((javascript|vbscript|data):|(java|vb)script$)",
        ),
        r(
            Xss,
            "xss-dom-sink",
            ANY,
            r"\b(document|window|top|parent|self|this|frames|globalthis)\s*\)?\s*(\.\s*|\[\s*['\x22`])((cookie|write|writeln|domain|location|body|createelement|getelementbyid|open|name|eval|execscript|globaleval|alert)\b|\$|\\x24)|\.(innerhtml|outerhtml|appendchild|insertadjacenthtml)\b|\bfromcharcode\b|\bglobaleval\b|\b(settimeout|setinterval|execscript)\s*\(|\bnew\s+function\s*\(|\b(alert|prompt|confirm|eval|atob|btoa)\s*(\(|`)|\(\s*(alert|prompt|confirm|eval|print)\s*\)\s*(\(|`)|\bfunction\s*\(\s*(['\x22`]|atob\s*\()[^)]*\)\s*(\(|`)",
        ),
        // a dialog function passed rather than called (`[1].find(alert)`,
        // `Reflect.apply(alert, …)`), or a name built from strings and
        // then called (`self['ale'+'rt'](1)`)
        r(
            Xss,
            "xss-indirect-call",
            ANY,
            r"\.(find|map|filter|foreach|some|every|then|call|apply|bind|sort|reduce)\s*\(\s*(alert|prompt|confirm|eval|print)\s*[,)]|\breflect\s*\.\s*(apply|construct)\s*\(\s*(alert|prompt|confirm|eval|function)\b|\[\s*(['\x22`][^'\x22`\]]*['\x22`]\s*\+\s*)+['\x22`][^'\x22`\]]*['\x22`]\s*\]\s*\(",
        ),
        r(
            Xss,
            "xss-jsfuck",
            ANY,
            r"\[\]\[|\(!\[\]|!\+\[\]|!!\[\]|\+\[\]\)|\[\+!\+\[\]",
        ),
        r(
            Xss,
            "xss-template",
            ANY,
            r"\{\{.*\b(constructor|__proto__|\$on|\$eval|alert|prompt)\b.*\}\}|\$\{\s*(eval|alert|prompt|constructor)\b|\.(call|apply)\s*`",
        ),
        r(Xss, "xss-utf7", ANY, r"\+adw-|\+ad4-"),
        r(
            Xss,
            "xss-markup-break",
            ANY,
            r"['\x22]\s*/?>\s*<\s*[a-z!/]|-->\s*<|</(title|style|textarea|script|xmp|noscript|iframe|a)>\s*<",
        ),
        r(
            Xss,
            "xss-xml-ns",
            N | V | H,
            r"<[a-z][\w:-]*\s[^>]*\bxmlns(:[a-z]+)?\s*=|<[a-z]+:include\b|\bxsi:schemalocation\b",
        ),
        // ---- SQL shapes the lexer's fingerprint does not see
        // the auth bypass `admin' --`, `admin') -- -`: a short identifier, a
        // closing quote (and parens), then a comment that ends the value
        r(
            Sqli,
            "sqli-quote-comment",
            N | V | H,
            r"^\s*[\w@.-]{0,64}(['\x22`]\)*|\)+)\s*--[\s-]*$",
        ),
        // a keyword glued to an inline comment (`drop/*x*/table`,
        // `/**/union/**/select`); a glob (`update/*/x`) has no `*/` without
        // a `/` inside
        r(
            Sqli,
            "sqli-comment-glue",
            N | V | H,
            r"\b(select|union|insert|delete|update|drop|alter|create|truncate|exec|execute|declare|from|where|having|and|or|xor|not|order|group|into|values|table|sleep|benchmark)/\*[^/]*?\*/|/\*[^/]*?\*/(select|union|insert|delete|update|drop|alter|create|truncate|exec|execute|declare|from|where|having|and|or|xor|order|group|into|values|table|sleep|benchmark)\b",
        ),
        // ---- XML external entities
        r(
            Generic,
            "xxe-entity",
            ANY,
            r"<!\s*(entity|doctype)\b|!entity\s+%?\s*\w+\s+(system|public)\b",
        ),
        // ---- path traversal and local files
        r(
            Lfi,
            "lfi-traversal",
            P | ANY,
            r"(^|[/\\=:;,'\x22\s])\.{2,}[/\\]|[/\\]\.{2,}([/\\;]|$)|\.\.;/|(0x2e|%2e)\.?(0x2e|%2e|\.)?\s*(0x2f|0x5c|%2f|%5c|/|\\)|0x5c0x2e",
        ),
        r(
            Lfi,
            "lfi-sensitive-file",
            P,
            r"(^|[/\\])(etc/(passwd|shadow|group|hosts|issue|subuid|subgid|sudoers|crontab|environment|profile|motd|master\.passwd|security/|ssh/|ssl/|mysql/|apache2?/|nginx/|httpd/|resolv\.conf|fstab|inittab|hostname|os-release|aliases|gshadow|pwd\.db|spwd\.db|shells|passwd-|shadow-|machine-id)|proc/(self|\d+|net|sys|version|cpuinfo|meminfo|interrupts|mounts|modules|cmdline|environ|kcore|partitions|loadavg|stat|sched_debug|kallsyms)|var/log/|var/run/secrets|root/\.|windows/(win\.ini|system\.ini|system32)|winnt/|boot\.ini|win\.ini|system32[/\\]|\.ssh/|\.aws/|\.git/|\.svn/|\.hg/|\.htaccess|\.htpasswd|\.bash_history|\.bashrc|\.zsh_history|id_rsa|id_dsa|id_ecdsa|id_ed25519|authorized_keys|known_hosts|web\.config|wp-config\.php|\.docker/config\.json|\.kube/config|\.npmrc|\.netrc|\.pgpass|\.my\.cnf|web-inf/|meta-inf/|var/run/docker\.sock|run/docker\.sock|etc/kubernetes/|run/secrets/|\.env(\.[a-z]+)?\b)",
        ),
        r(
            Lfi,
            "lfi-sensitive-file",
            ANY,
            r"^\s*['\x22]?(file:/*|[a-z]:)?([/\\]|\.{1,2}[/\\])*(etc/(passwd|shadow|group|hosts|issue|subuid|subgid|sudoers|crontab|environment|profile|motd|master\.passwd|security/|ssh/|ssl/|mysql/|apache2?/|nginx/|httpd/|resolv\.conf|fstab|inittab|hostname|os-release|aliases|gshadow|pwd\.db|spwd\.db|shells|passwd-|shadow-|machine-id)|proc/(self|\d+|net|sys|version|cpuinfo|meminfo|interrupts|mounts|modules|cmdline|environ|kcore|partitions|loadavg|stat|sched_debug|kallsyms)|var/log/|var/run/secrets|root/\.|windows/(win\.ini|system\.ini|system32)|winnt/|boot\.ini|win\.ini|system32[/\\]|\.ssh/|\.aws/|\.git/|\.svn/|\.hg/|\.htaccess|\.htpasswd|\.bash_history|\.bashrc|\.zsh_history|id_rsa|id_dsa|id_ecdsa|id_ed25519|authorized_keys|known_hosts|web\.config|wp-config\.php|\.docker/config\.json|\.kube/config|\.npmrc|\.netrc|\.pgpass|\.my\.cnf|web-inf/|meta-inf/|var/run/docker\.sock|run/docker\.sock|etc/kubernetes/|run/secrets/|\.env(\.[a-z]+)?\b)[^\s]*\s*$",
        ),
        r(
            Lfi,
            "lfi-sensitive-file",
            ANY,
            r"(\.\.[/\\]|[;|&]\s*)/?(etc/(passwd|shadow|group|hosts|issue|subuid|subgid|sudoers|crontab|environment|profile|motd|master\.passwd|security/|ssh/|ssl/|mysql/|apache2?/|nginx/|httpd/|resolv\.conf|fstab|inittab|hostname|os-release|aliases|gshadow|pwd\.db|spwd\.db|shells|passwd-|shadow-|machine-id)|proc/(self|\d+|net|sys|version|cpuinfo|meminfo|interrupts|mounts|modules|cmdline|environ|kcore|partitions|loadavg|stat|sched_debug|kallsyms)|var/log/|var/run/secrets|root/\.|windows/(win\.ini|system\.ini|system32)|winnt/|boot\.ini|win\.ini|system32[/\\]|\.ssh/|\.aws/|\.git/|\.svn/|\.hg/|\.htaccess|\.htpasswd|\.bash_history|\.bashrc|\.zsh_history|id_rsa|id_dsa|id_ecdsa|id_ed25519|authorized_keys|known_hosts|web\.config|wp-config\.php|\.docker/config\.json|\.kube/config|\.npmrc|\.netrc|\.pgpass|\.my\.cnf|web-inf/|meta-inf/|var/run/docker\.sock|run/docker\.sock|etc/kubernetes/|run/secrets/|\.env(\.[a-z]+)?\b)",
        ),
        // a credential file in a user's dot-directory under any home
        // (`/home/app/.aws/credentials`), as the whole value
        r(
            Lfi,
            "lfi-sensitive-file",
            ANY,
            r"^\s*['\x22]?(file:/*|[a-z]:)?([/\\][\w.-]+)*[/\\](\.ssh/|\.aws/|\.kube/config|\.docker/config\.json|\.gnupg/|\.git-credentials|\.npmrc|\.netrc|\.pgpass|\.my\.cnf|\.bash_history|\.zsh_history)[^\s]*\s*$",
        ),
        r(Lfi, "lfi-file-scheme", N | V | H, r"(^|[\s'\x22=(])file:/"),
        // ---- remote command execution
        r(
            Rce,
            "rce-command-after-separator",
            ANY,
            leaked(format!(
                r"([;&|`\n]|\$\(|\$\{{|\|\||&&)\s*(\(\s*|\{{\s+)?['\x22]?\s*(\$\w+\s+)?(sudo\s+|nohup\s+|time\s+|timeout\s+\d+\s+)?({cmds})(\.exe)?([\s;&|<>`'\x22)}},]|$)"
            )),
        ),
        // A lone `&` between blanks is English as often as shell ("date &
        // time", "text & more"): after it an English-word command needs a
        // shell-shaped argument; after any other separator (or `&` right
        // against the command) the end of the value or a separator will do.
        r(
            Rce,
            "rce-command-after-separator",
            ANY,
            leaked(format!(
                r"(([;|`\n]|\$\(|\$\{{|\|\||&&)\s*(\(\s*|\{{\s+)?['\x22]?\s*|&(\(\s*|\{{\s+)?['\x22]?)(sudo\s+|nohup\s+)?({common})(\.exe)?(\s+(-{{1,2}}[a-z0-9]|/|~|\$|\.{{0,2}}/|[a-z]:\\|[a-z0-9._-]+\s+-|['\x22])|\s*[;&|<>`'\x22)}}]|\s*$)",
                common = COMMON_CMDS
            )),
        ),
        r(
            Rce,
            "rce-command-after-separator",
            ANY,
            leaked(format!(
                r"&\s+(\(\s*|\{{\s+)?['\x22]?\s*(sudo\s+|nohup\s+)?({common})(\.exe)?(\s+(-{{1,2}}[a-z0-9]|/|~|\$|\.{{0,2}}/|[a-z]:\\)|\s*[|<>`])",
                common = COMMON_CMDS
            )),
        ),
        // a time delay, the blind injection's probe: `;sleep 5`, `|timeout 5 yes`
        r(
            Rce,
            "rce-time-delay",
            ANY,
            r"([;&|`\n]|\$\(|\|\||&&)\s*(sleep\s+\d+(\.\d+)?[smhd]?|timeout\s+\d+[smhd]?\s+[a-z]\S*)\s*([;&|`'\x22)}#]|$)",
        ),
        r(
            Rce,
            "rce-variable-command",
            ANY,
            r"[;&|\n]\s*\$\{?[a-z_]\w*\}?\s+[a-z]|[;&|\n]\s*(\$\{?[a-z_]\w*\}?){2,}(\s+[a-z/-]|\s*([;&|]|$))",
        ),
        r(
            Rce,
            "rce-command-start",
            V | H | N,
            r"^\s*['\x22]?(sudo\s+|nohup\s+|time\s+|timeout\s+\d+\s+)?(whoami|ifconfig|ipconfig|uname|netstat|nslookup|wget|curl|ncat|netcat|nmap|busybox|socat|mkfifo|strace|ltrace|tcpdump|certutil|bitsadmin|mshta|rundll32|regsvr32|wmic|vssadmin|ansible(-[a-z]+)?|chef(-[a-z]+)?|cscli|pipx|lwp-download|lwp-request|cpulimit|gunzip|zcat|zstdcat|unxz|xzcat|bzcat|chmod|chown|crontab|useradd|systemctl|cat|ls|ll|rm|cp|mv|ps|id|kill|nc|tar|dd|perf|pip3?|npm|nohup|time|bash|sh|zsh|ksh|python[23]?(\.\d+)?|perl|ruby|php|node|ping|echo|base64|find|grep|awk|sed|head|tail|date|ssh|scp|set|export|unset|alias|gcc|cc|c89|c99|visudo|iwr)(\.exe)?(\s+(-{1,2}[a-z]|/[a-z]|~/|\$|\.\.?/|[a-z0-9._-]+\.(sh|txt|gz|log|php|py|pl|rb|conf|ini|bak|json|yml|yaml)\b|\d+\.\d+\.\d+\.\d+|(whoami|ifconfig|uname|id|ls|ps|ping|curl|wget|cat|cmd)\b)|\s*([;|<>`]|&&)|&)",
        ),
        r(
            Rce,
            "rce-bare-tool",
            V | H | N,
            r"^\s*['\x22]?(time\s+|nohup\s+)?(whoami|ipconfig|systeminfo)(\.exe)?\s*$",
        ),
        r(
            Rce,
            "rce-tool-invocation",
            V | H | N,
            r"^\s*['\x22]?(ansible-(playbook|vault|galaxy|inventory|console|pull|doc|config|test|connection)|chef-(client|shell|solo|vault|run|apply|zero)|aa-(disable|enforce|complain|exec|status)|cscli|pipx|nohup|strace|cpulimit|lwp-download)\s+\S",
        ),
        r(
            Rce,
            "rce-command-line",
            V | H | N,
            r"^\s*(sudo\s+)?(ansible(-[a-z]+)?|chef-[a-z]+|visudo|whoami|ifconfig|ipconfig|netstat|nslookup|ncat|netcat|nmap|socat|crontab|systemctl|useradd|certutil|wmic|zstdcat|unxz|xzcat|bzcat)(( [^\n]*)? (-{1,2}[a-z]|/)[^\n]*)?\n\s*$",
        ),
        r(
            Rce,
            "rce-ssi",
            ANY,
            r"<!--\s*#\s*(exec|include|echo|printenv|config|fsize|flastmod)\b",
        ),
        r(Rce, "rce-tilde-expansion", V | N, r"^~[+-]\d*$"),
        r(
            Rce,
            "rce-bracket-glob",
            ANY,
            r"(^|[\s;|&=])/[\w/.-]*\[[^\]]+\]",
        ),
        r(
            Rce,
            "rce-substitution",
            ANY,
            r"\$\(\s*[a-z({$]|`\s*(/[\w/]*)?(whoami|id|ls|cat|uname|ifconfig|curl|wget|nc|bash|sh|ping|echo|ps|cut|dig|sleep|rm|cp|mv|head|tail|python|perl|php|ruby|base64|env|printenv|hostname|who|nslookup|chmod|find)\b[^`]*`|\$\{?ifs\b|\$\{[a-z_]*:?-?[0-9]*\}\s*[a-z/]|\$\{\w*[:#%/^,~@!-]",
        ),
        r(
            Rce,
            "rce-brace-expansion",
            ANY,
            leaked(format!(
                r"\{{\s*,?\s*({cmds}|/[\w/]+)\s*,[^}}]*\}}|(^|[\s;|&`])\{{[\w./$'-]*,[\w./$'-]*\}}|\{{,[^{{}}\s,]+,[^{{}}]*\}}"
            )),
        ),
        r(Rce, "rce-shellshock", ANY, r"\(\s*\)\s*\{"),
        r(
            Rce,
            "rce-shell-path",
            ANY,
            r"(^|[\s'\x22=;|&`(])/(usr/)?(local/)?s?bin/[a-z0-9_-]*[?*\[]|(^|[\s'\x22=;|&`(])/(usr/)?(local/)?s?bin/(bash|sh|zsh|ksh|csh|tcsh|dash|nc|ncat|netcat|cat|ls|id|rm|cp|mv|ps|kill|chmod|chown|wget|curl|python[23]?|perl|ruby|php|busybox|whoami|uname|ping|echo|ab|env|sudo|su)\b|/dev/(tcp|udp)/|/dev/null|\bcmd(\.exe)?\s*/[ck]\b|\bpowershell(\.exe)?\s+-|\binvoke-(expression|webrequest|command|item|restmethod)\b|\biex\s*\(|%comspec%|%systemroot%|\\windows\\system32|c:\\windows",
        ),
        r(
            Rce,
            "rce-redirection",
            ANY,
            r"(>&|2>&1|>\s*/dev/|<<<|<\(|>\()",
        ),
        r(
            Rce,
            "rce-glob-path",
            ANY,
            r"(^|[\s;|&=])/[a-z]*(\?|\*|\[[^\]/]*\])[a-z?*\[\]]*/[a-z.?*\[]|(^|[\s;|&=])/[a-z]+/[a-z]*[?*][a-z?*]*(\s|$)",
        ),
        r(
            Rce,
            "rce-windows-for",
            ANY,
            r"(^|[&|;(\s])for\s+(/[dflr]\s+(\x22[^\x22]*\x22\s+)?)*([a-z]:\\\S*\s+)?%%?[\w~-]+\s+in\s*\(|\)\s*do\s+(@?echo|call|set|cmd|del|copy|start|if)\b",
        ),
        r(
            Rce,
            "rce-windows-if",
            ANY,
            r"(^|[&|;(])\s*if(\s+|\s*/i\s*)(not\s+)?(exist|defined|errorlevel|cmdextversion)\b|(^|[&|;(])\s*if(\s+|\s*/i\s*|\s*\()(not\s+)?.{1,60}?(==|\s(equ|neq|lss|leq|gtr|geq)\s)",
        ),
        // Windows administration commands after a separator, with the
        // sub-command that makes them one (`& reg query HKLM\…`, `& net
        // view`, `| sc query`): "profit & net user growth" passes
        r(
            Rce,
            "rce-windows-command",
            ANY,
            r"[;&|]\s*(reg(\.exe)?\s+(query|add|delete|save|export|import)\s+hk|net(\.exe)?\s+(view|user|users|localgroup|share|use|session|accounts)(\s+[/\\]|\s*$)|sc(\.exe)?\s+(query|queryex|qc|create|config|delete)(\s+[\w.-]+)?\s*$)",
        ),
        // PowerShell cmdlets with a shell-shaped argument (`Get-ChildItem
        // C:\`, `(New-Object Net.WebClient)`, `Set-ExecutionPolicy Bypass`);
        // "Get-ChildItem recursion" passes
        r(
            Rce,
            "rce-powershell",
            ANY,
            r"\b(get-childitem|gci|get-content|set-content|remove-item|start-process|invoke-webrequest|invoke-restmethod|new-object|set-executionpolicy|get-wmiobject|get-ciminstance|add-mppreference|set-mppreference)\s+(-[a-z]|[a-z]:\\|\\\\)|\bnew-object\s+(system\.)?net\.(webclient|sockets)\b|\bset-executionpolicy\s+(bypass|unrestricted)\b",
        ),
        r(
            Rce,
            "rce-alias",
            ANY,
            r"\balias\s+(-[a-z]+\s+|\+[a-z]\s+)?['\x22]?[\w-]+['\x22]?\s*=",
        ),
        r(
            Rce,
            "rce-sqlite-shell",
            ANY,
            r"(^|;)\s*(\\n|\n)?\s*\.(shell|system|databases|tables|dump|import|output|load|read|open|once)\b",
        ),
        r(Rce, "rce-history", ANY, r"^!-?\d+(!-?\d+)?$"),
        tx(
            Rce,
            "rce-mail-command",
            ANY,
            r"(?i)\r\n\s*([a-z0-9]+\s+)?(rcpt\s+to|mail\s+from|helo|ehlo|data|quit|vrfy|expn|apop|retr|dele|noop|rset|stat|top|uidl|user|pass|capability|login|logout|select|examine|search|fetch|store|copy|uid|expunge|starttls|authenticate|auth|append|list|lsub|status|create|delete|rename|subscribe|help)\b",
        ),
        r(
            Rce,
            "rce-code-exec",
            ANY,
            r"\b(os|subprocess|commands|pty)\s*\.\s*(system|popen\d?|spawn\w*|exec\w*|call|run|check_output|getoutput)\s*\(|\b__import__\s*\(|\bcompile\s*\(\s*['\x22]|\b(process|kernel|open3|io)\s*\.\s*(spawn|exec|system|popen\w*|capture\w*)\b|%x\(|\bexec\s*\(\s*['\x22]",
        ),
        // ---- PHP
        r(
            Php,
            "php-open-tag",
            ANY,
            r"<\?(php|=|\s)|<\?$|<\?xml\s*:\s*\w|\{/?php\}|\[/?php\]",
        ),
        r(
            Php,
            "php-wrapper",
            ANY,
            r"\b(php|phar|zip|zlib|compress\.zlib|compress\.bzip2|glob|expect|rar|ogg|ssh2(\.[a-z]+)?)://",
        ),
        r(
            Php,
            "php-superglobal",
            ANY,
            r"\$_(get|post|cookie|server|request|files|env|session)\b|\$globals\b|\$http_[a-z]+_vars\b",
        ),
        r(
            Php,
            "php-function-call",
            ANY,
            concat!(
                r"\b(popen|call_user_func_array|preg_replace|fopen|fwrite|fputs|readfile|curl_init|print_r|var_dump|var_export|include_once|require_once|symlink|putenv|ini_set|array_map|array_filter|usort|uasort|filemtime|filegroup|fileowner|chroot|gethostbyname|strrev|ucfirst|opendir|scandir|unlink|posix_\w+|getenv)",
                php_gap!(),
                r"\(|(shell_exec|passthru|proc_open|pcntl_exec|base64_decode|gzinflate|gzuncompress|gzdecode|str_rot13|create_function|call_user_func|file_get_contents|file_put_contents|fsockopen|curl_exec|unserialize|phpinfo|highlight_file|show_source|move_uploaded_file|assert_options|escapeshellcmd|escapeshellarg)",
                php_gap!(),
                r"\(|\b(eval|assert|system|exec|include|require|serialize|dl)",
                php_gap!(),
                r"\(\s*(['\x22$@`]|\w+\s*\(|\)\s*;)",
            ),
        ),
        r(
            Php,
            "php-function-as-value",
            ANY,
            r"\(\s*(system|exec|passthru|shell_exec|eval|assert|popen|proc_open|phpinfo)\s*\)\s*\(|['\x22](system|exec|passthru|shell_exec|eval|assert|popen|proc_open|phpinfo|base64_decode)['\x22]\s*\(|\[\s*(system|exec|passthru|shell_exec|eval|assert|popen|proc_open)\s*\]\s*\[\s*\d+\s*\]|(['\x22]\w*['\x22]\s*\.\s*)+['\x22]\w*['\x22]\s*\(",
        ),
        r(
            Php,
            "php-comment-before-call",
            ANY,
            concat!(r"\b[a-z_]\w*\s*(", php_comment!(), ")", php_gap!(), r"\("),
        ),
        r(
            Php,
            "php-snake-call",
            ANY,
            r"\b[a-z][a-z0-9]*(_[a-z0-9]+)+\(($|[^0-9]|[0-9][0-9a-z]*($|[^0-9a-z)]))",
        ),
        r(
            Php,
            "php-serialized",
            ANY,
            r#"\b[oc]:\+?\d+:"[^"]+":\d+:\{|\ba:\d+:\{([si]:\d+[:;]|\}|$)|^s:\d+:""#,
        ),
        r(
            Php,
            "php-variable-call",
            ANY,
            concat!(
                r"@?\$+[\w]*",
                php_gap!(),
                r"((\[([^\[\]]|\[[^\]]*\])*\]|\{[^}]*\})",
                php_gap!(),
                r")*\(|\$\s*\{\s*@?\$?\w*\s*\}|\$\{[^}]*\}\s*(\[|\()|\$\{\s*['\x22][^'\x22]*['\x22]\s*\}",
            ),
        ),
        r(
            Php,
            "php-callable-string",
            ANY,
            r#"[)\]'"](/\*[^*]*\*/)?\(\s*['"$@]"#,
        ),
        r(
            Php,
            "php-ini-directive",
            ANY,
            r"\b(allow_url_(include|fopen)|auto_(prepend|append)_file|disable_functions|open_basedir|extension_dir|extension|safe_mode|register_globals|opcache\.[\w.]+|zend_extension|include_path|error_log|short_open_tag|upload_tmp_dir|display_errors|sendmail_path)\s*=",
        ),
        r(
            Php,
            "php-upload",
            F | N,
            r"\.\s*(php\d*|phtml\d*|pht|phpt|phar|phps|shtml|jsp|jspx|asp|aspx|cer|asa|cgi|htaccess|user\.ini)(\s|\.|$|[^a-z])",
        ),
        r(Php, "php-session-file", F | V, r"(^|[/\\])sess_[\w-]{10,}"),
        // ---- Java
        r(
            Java,
            "java-class",
            ANY,
            r"(^|[^\w./])java\.(lang|io|util|net|nio|beans|rmi|security|sql|awt|applet)(\.[a-z]|$|[^\w./])|\bjavax\.(naming|script|management|el|faces|servlet|xml|swing|sql|rmi|security|crypto|imageio|sound)\b|\borg\.omg\b|\borg\.apache\.(commons\.(collections|beanutils)|xalan|xerces|tomcat|catalina|naming|bcel|myfaces|struts)|\bcom\.sun\.|\bsun\.(misc|reflect|rmi|tools|net)\b|\borg\.springframework\.|\borg\.codehaus\.groovy|\bgroovy\.lang\b|\bognl\.|\bcom\.opensymphony\.|\bfreemarker\.template\b|\borg\.mozilla\.javascript",
        ),
        r(
            Java,
            "java-gadget",
            ANY,
            r"(clone|instantiate|invoker|chained|constant)transformer|forclosure|whileclosure|instantiatefactory|prototype(clone|serialization)factory|processbuilder|getruntime|\blazymap|\btransformedmap|templatesimpl|jdbcrowsetimpl|annotationinvocationhandler|xmldecoder|objectinputstream|\bjava\.[\w.]*\b(runtime|processbuilder)\b",
        ),
        r(
            Java,
            "java-reflection",
            ANY,
            r"\.(getclass|forname|getmethod|getdeclaredmethod|newinstance|getruntime|getclassloader|getparameter)\s*\(|\bclass\.(module\.)?classloader\b",
        ),
        tx(
            Java,
            "java-serialized",
            ANY,
            // the stream magic `ac ed 00 05` in base64, at each of the three
            // byte offsets it can start at: the characters that depend on
            // it alone (`KztAAU` and `Cs7QAF` in CRS fix the bytes around)
            r"rO0AB|ztAA[U-X]|s7QAF|\baced0005|\xac\xed\x00\x05",
        ),
        r(
            Java,
            "java-jsp-upload",
            F,
            r"\.\s*(jsp|jspx|jspf|war|jar)(\s|\.|$)",
        ),
        // ---- Node.js
        r(
            Nodejs,
            "nodejs-injection",
            ANY,
            r"\brequire\s*(\(|\.\s*main\b)|['\x22`]\s*child_process\b|\bchild_process\s*['\x22`]|\bprocess\s*(\.\s*|\[\s*['\x22`])((env|mainmodule)\b|(binding|exit|kill|cwd|dlopen)['\x22`\]]*\s*\()|\bconstructor\s*\]?\s*(\.|\[)\s*['\x22]?(constructor|prototype)\b|\bthis\.constructor\b|__proto__|_\$\$nd_func\$\$_|\bfunction\s*\w*\s*\([^)]*\)\s*\{|\bwhile\s*\(+\s*(!|true|[+-]?([1-9]|infinity\b)|this|\[|\{|new\s|(string|number|object|boolean|symbol|date|array|function)\s*\))|\bconsole\s*\.\s*(log|info|error|warn|debug|dir|trace)\s*(\(|\.\s*(call|apply|bind)\b)|\.(spawn|execsync|spawnsync|execfile|exec)\s*\(|\bglobal\s*\.\s*process\b|\bmodule\s*\.\s*exports\b|\$\d+:constructor",
        ),
        tx(Nodejs, "nodejs-serialized-b64", ANY, r"XyQkTkRfRlVOQyQk"),
        // ---- remote file inclusion and SSRF (parameter values only)
        r(
            Rfi,
            "rfi-ip-url",
            V,
            r"^\s*(https?|ftps?)://\d{1,3}(\.\d{1,3}){3}\b",
        ),
        r(
            Rfi,
            "rfi-url-truncation",
            V,
            r"^\s*(https?|ftps?|file)(:/?/?[^?\s]*)?\?+$",
        ),
        r(
            Rfi,
            "rfi-authority-confusion",
            V,
            r"^\s*(https?|ftps?)://[^\s@]*/[^\s/@]*:[^\s/]*@|^\s*(https?|ftps?)://[^/\s]*@[^/\s]*@",
        ),
        r(
            Rfi,
            "rfi-scheme",
            V | N,
            r"^\s*(jar|netdoc|expect|xri|phar|local_file):|^\s*data:[a-z]+/[\w.+-]+\s*[;,]?",
        ),
        r(
            Generic,
            "ssrf-internal-host",
            V,
            r"^\s*([a-z][a-z0-9+.-]*:)?//([^/@]*@\s*)*\[?(localhost\.?|127\.\d+\.\d+\.\d+|0\.0\.0\.0|0+|169\.254\.\d+\.\d+|169\.254\.\d+|100\.100\.100\.200|metadata(\.google\.internal)?|::1?|::ffff:|0:0:0:0:0:(0|ffff):|fe80:|fd00:ec2|[0-9]{8,12}|0x[0-9a-f]+|0[0-7]+\.|[a-f0-9:]*::|([a-z0-9-]+\.)+(internal|local|localdomain|svc|svc\.cluster\.local|consul)|host\.docker\.internal|localtest\.me|[\w.-]*\.nip\.io)([\]:/?#%\s]|$)|://[^/\s]*\\|^\s*(localhost\.localdomain|ipv6-localhost|ipv6-loopback|ip6-localhost|ip6-loopback|host\.docker\.internal|host\.containers\.internal|gateway\.docker\.internal|localtest\.me|kubernetes\.default(\.svc(\.cluster\.local)?)?|kubernetes\.docker\.internal|[\w-]+(\.[\w-]+)*\.svc\.cluster\.local|localhost[46]?\.localdomain[46]?)([:/]|$)|\b169\.254\.169\.254\b.*\b(latest|computemetadata|metadata|openstack)\b|\[::ffff:|\b169\.254\.\d+$",
        ),
        // a cloud metadata endpoint named anywhere but free text (a header
        // such as `X-Callback-Url`, a parameter or JSON key name): no
        // browser or SDK sends one, and a server behind may fetch it
        r(
            Generic,
            "ssrf-metadata-endpoint",
            N | V | H,
            r"://([^/@]*@\s*)*\[?(169\.254\.169\.254|0xa9fea9fe|2852039166|metadata\.google\.internal|100\.100\.100\.200|instance-data(\.ec2\.internal)?|fd00:ec2::254|(::ffff:)?169\.254\.169\.254)([\]:/?#%\s]|$)",
        ),
        r(
            Generic,
            "ssrf-ip-literal",
            V,
            r"^\s*[a-z][a-z0-9+.-]*://([^/\s]*@)?(0x[0-9a-f]+|\d+)(\.(0x[0-9a-f]+|\d+)){1,3}([\]:/?#%\s]|$)|^\s*(https?|ftps?|gopher|dict|ldap|tftp|sftp|telnet|ssh|irc|pop3|imap|smtp|redis|file):/{0,2}([^/\s]*@)?((0x[0-9a-f]+|\d+)(\.(0x[0-9a-f]+|\d+)){1,3}|\d{8,10}|0x[0-9a-f]{8})([:/?#%\s]|$)|^\s*[a-z][a-z0-9+.-]*://\[[0-9a-f:.]*:[0-9a-f:.]*\]|^\s*[a-z][a-z0-9+.-]*://[^/]*@\s*\[?\d{1,3}(\.\d{1,3}){3}",
        ),
        r(
            Generic,
            "template-injection",
            ANY,
            r"\{%-?\s*(debug|import|include|extends|macro)\b|@\(\s*\d+\s*[*+/-]\s*\d+|#_memberaccess\b|@ognl\.|#context\s*\[|['\x22\]]\s*\.\s*execute\s*\(\s*\)|(\{\{|\{%|<%=?|#\{|\$\{|\*\{)[^}%]*?(\.\s*\w+\s*\(|\w\s*\(|__\w+__|\[\s*['\x22]|\d\s*[*+/-]\s*\d|\bif\b)|\b(__class__|__mro__|__subclasses__|__globals__|__builtins__|__getattribute__)\b",
        ),
        r(
            Generic,
            "perl-interpolation",
            ANY,
            r"@\{\s*\[|\bcore::\w+|\bqq\{",
        ),
        r(
            Generic,
            "orm-lookup-injection",
            N,
            r"^\w+(__\w+){2,}$|^(password|passwd|email|token|secret|is_staff|is_superuser|is_admin)__(startswith|istartswith|endswith|iendswith|contains|icontains|regex|iregex|exact|iexact|gt|gte|lt|lte|in|has_keys?|has_any_keys)$|__(has_keys?|has_any_keys|regex|iregex)$",
        ),
        r(
            Session,
            "session-cookie-set",
            ANY,
            r"\bdocument\s*\.\s*cookie\s*=|\bset-cookie\s*:|\bsessionid\s*=\s*\w+\s*;\s*domain=",
        ),
    ]
});

/// The session cookie names of server frameworks (Java servlets, PHP, ASP,
/// ColdFusion, Laravel, Express …): not the generic `sessionid` or
/// `session_id`, which an API may well use for a member of its own.
const FRAMEWORK_SESSION_NAMES: &str = r"jsessionid|phpsessid|phpsession|aspsessionid\w*|asp\.net_sessionid|cftoken|cfid|laravel_session|ci_session|play_session|connect\.sid|zend_session_id|(__secure-|__host-)?next-auth\.session-token|jservsession|rack\.session|koa[.:]sess(\.sig)?|(sails|express)\.sid";

/// The generic session identifier names, besides the frameworks' own.
const GENERIC_SESSION_NAMES: &str = r"sessionid|session_id|_session_id|sess_id|sid|[\w.-]*[._-]session[._-]?(id|token)|[\w]+_session|session-id";

/// A session identifier's name (`JSESSIONID`, `PHPSESSID`, `connect.sid`
/// …), matched on a decoded, lower-cased parameter name.
static SESSION_PARAMETER_RE: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
    regex::Regex::new(&format!(
        "^({FRAMEWORK_SESSION_NAMES}|{GENERIC_SESSION_NAMES})$"
    ))
    .ok()
});

static FRAMEWORK_SESSION_RE: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(&format!("^({FRAMEWORK_SESSION_NAMES})$")).ok());

/// Does `re` match the whole of `name`, trimmed and lower-cased?
fn name_matches(re: &LazyLock<Option<regex::Regex>>, name: &str) -> bool {
    let n = name.trim().to_lowercase();
    re.as_ref().is_some_and(|re| re.is_match(&n))
}

/// Session fixation: a session identifier passed as a query, form or path
/// parameter (`?jsessionid=…`, `/login;jsessionid=…`). Cookie names and
/// JSON members are not parameters: a browser sends the session cookies of
/// every application on `localhost` (`sessionid`, `connect.sid`), and an
/// API's `session_id` member is data.
pub fn session_parameter(name: &str) -> bool {
    name_matches(&SESSION_PARAMETER_RE, name)
}

/// A JSON member named like a framework's session cookie
/// (`{"phpsession": …}`): session fixation through a JSON body.
pub fn framework_session_name(name: &str) -> bool {
    name_matches(&FRAMEWORK_SESSION_RE, name)
}

/// A whole header value that is one command line: a tool with no English
/// meaning, a blank, then a shell-shaped argument (an option, a path, a
/// URL, `key=value`, or a word and then an option: `ansible all -m ping`).
static HEADER_COMMAND_LINE: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
    regex::Regex::new(&format!(
        r"(?i)^\s*['\x22]?(sudo\s+)?({DISTINCT_CMDS}|knife|dd)(\.exe)?\s+(-{{1,2}}[a-z0-9]|[/~]|\.{{1,2}}/|[a-z][a-z0-9+.-]*://|[a-z]:\\|[a-z_]+=\S|[\w.-]+\s+(-{{1,2}}[a-z]|-\s|[/'\x22]))"
    ))
    .ok()
});

/// Is `value` (a `User-Agent` or `Referer`) a command line?
pub fn header_command_line(value: &str) -> bool {
    HEADER_COMMAND_LINE
        .as_ref()
        .is_some_and(|re| re.is_match(value))
}

/// Every rule's id and pattern (for the test that proves the prefilter
/// never hides a rule match).
#[cfg(test)]
pub(crate) fn patterns() -> Vec<(&'static str, &'static str)> {
    RULES.iter().map(|r| (r.id, r.re)).collect()
}

/// One form's rules as a set, with each set member's index in [`RULES`].
struct FormSet {
    set: RegexSet,
    idx: Vec<usize>,
}

/// The rules of one kind of location, one set per form. (One set per kind
/// rather than one for all kinds: a set costs in proportion to the rules in
/// it, and a path is checked by two rules, not by all of them.)
struct KindSets {
    forms: [FormSet; 3],
}

/// Every kind, in the order of [`Kind::bit`].
const KINDS: [Kind; 5] = [
    Kind::Path,
    Kind::Name,
    Kind::Value,
    Kind::Header,
    Kind::Filename,
];

/// Indexed by `Kind::slot()`.
static COMPILED: LazyLock<Vec<KindSets>> = LazyLock::new(|| {
    let build = |v: &[&str]| {
        regex::RegexSetBuilder::new(v)
            .size_limit(64 << 20)
            .dfa_size_limit(64 << 20)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "IDS rule set failed to compile");
                RegexSet::empty()
            })
    };
    KINDS
        .iter()
        .map(|kind| {
            let bit = kind.bit();
            let form = |f: Form| {
                let (res, idx): (Vec<&str>, Vec<usize>) = RULES
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.kinds & bit != 0 && r.form == f)
                    .map(|(i, r)| (r.re, i))
                    .unzip();
                FormSet {
                    set: build(&res),
                    idx,
                }
            };
            KindSets {
                forms: [form(Form::Folded), form(Form::Squeezed), form(Form::Text)],
            }
        })
        .collect()
});

/// Compile the rule sets now (at startup) rather than on the first request.
pub fn warm_up() {
    LazyLock::force(&COMPILED);
}

/// A rule that matched.
pub struct RuleHit {
    pub family: Family,
    pub id: &'static str,
}

/// Run every rule that applies to `kind` over the three forms; call `hit`
/// for each match, in rule order, until it returns `false`.
pub fn scan(
    kind: Kind,
    folded: &str,
    squeezed: &str,
    text: &str,
    mut hit: impl FnMut(RuleHit) -> bool,
) {
    let Some(sets) = COMPILED.get(kind.slot()) else {
        return;
    };
    for (fs, s) in sets.forms.iter().zip([folded, squeezed, text]) {
        if s.is_empty() || fs.idx.is_empty() {
            continue;
        }
        for m in fs.set.matches(s).iter() {
            let Some(rule) = fs.idx.get(m).and_then(|&i| RULES.get(i)) else {
                continue;
            };
            if !hit(RuleHit {
                family: rule.family,
                id: rule.id,
            }) {
                return;
            }
        }
    }
}

/// A sensitive file handed to any command after a separator (`;paste
/// /etc/passwd`, `| base32 /etc/shadow`): consulted only when no rule
/// matched, so that a command the rules name (`;cat /etc/passwd`) is
/// reported as the command injection it is.
pub fn sensitive_file_after_command(folded: &str) -> bool {
    static RE: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
        regex::Regex::new(
            r"[;|&`\n]\s*[^\s;|&]+(\s+-{1,2}[^\s;|&]+)*\s+/(etc/(passwd|shadow|gshadow|sudoers|master\.passwd)|proc/self/|root/\.)",
        )
        .ok()
    });
    folded.contains('/') && RE.as_ref().is_some_and(|re| re.is_match(folded))
}

/// A command name glued together from pieces that a shell joins and a
/// reader does not: `cu$@rl`, `ti''me`, `w\ho\am\i`, `who^am^i`, `wh``oami`.
/// Any command name counts, English words too, because the pieces are the
/// evasion: no one types `ti''me` for "time". The joined name must be
/// three letters or more (an SQL-escaped `I''d` is not `id`), four for
/// carets (`a^t` is a transposed matrix).
pub fn command_glued_in_word(folded: &str) -> bool {
    static NAMES: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
        regex::Regex::new(&format!(r"^({DISTINCT_CMDS}|{COMMON_CMDS})(\.exe)?$")).ok()
    });
    if !folded.contains(['\'', '"', '\\', '$', '^', '`']) {
        return false;
    }
    let Some(names) = NAMES.as_ref() else {
        return false;
    };
    let word = |c: Option<&u8>| c.is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
    folded
        .split(|c: char| c.is_ascii_whitespace() || ";|&<>(){}=,:/".contains(c))
        .any(|token| {
            let b = token.as_bytes();
            let mut joined = String::with_capacity(b.len());
            let (mut glued, mut caret) = (false, false);
            let mut i = 0;
            while let Some(&c) = b.get(i) {
                let inside = i > 0 && word(b.get(i - 1));
                let skip = match (c, b.get(i + 1)) {
                    (b'\'' | b'"' | b'`', Some(&n)) if n == c && inside && word(b.get(i + 2)) => 2,
                    (b'$', Some(b'@' | b'*' | b'#' | b'?' | b'!' | b'-')) if inside => 2,
                    (b'\\' | b'^', n) if inside && word(n) => {
                        caret |= c == b'^';
                        1
                    }
                    _ => 0,
                };
                if skip == 0 {
                    joined.push(char::from(c));
                    i += 1;
                } else {
                    glued = true;
                    i += skip;
                }
            }
            glued
                && joined.len() >= if caret { 4 } else { 3 }
                && joined.is_ascii()
                && names.is_match(&joined)
        })
}

/// Keywords whose base64 encodings (at each of the three byte alignments)
/// betray a serialized Java gadget chain inside a base64 blob.
const B64_KEYWORDS: &[&str] = &[
    "runtime",
    "Runtime",
    "processbuilder",
    "ProcessBuilder",
    "clonetransformer",
    "CloneTransformer",
    "forclosure",
    "ForClosure",
    "instantiatefactory",
    "InstantiateFactory",
    "instantiatetransformer",
    "InstantiateTransformer",
    "invokertransformer",
    "InvokerTransformer",
    "prototypeclonefactory",
    "PrototypeCloneFactory",
    "prototypeserializationfactory",
    "PrototypeSerializationFactory",
    "whileclosure",
    "WhileClosure",
    "java.lang",
    "getRuntime",
];

/// Base64 fragments of [`B64_KEYWORDS`], case-sensitive.
pub static B64_FRAGMENTS: LazyLock<Option<aho_corasick::AhoCorasick>> = LazyLock::new(|| {
    use base64::Engine;
    let mut pats: Vec<String> = Vec::new();
    for kw in B64_KEYWORDS {
        for off in 0..3usize {
            let mut buf = vec![0u8; off];
            buf.extend_from_slice(kw.as_bytes());
            let enc = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&buf);
            let start = (8 * off).div_ceil(6);
            let end = (8 * (off + kw.len())) / 6;
            if let Some(frag) = enc.get(start..end) {
                if frag.len() >= 8 {
                    pats.push(frag.to_string());
                }
            }
        }
    }
    aho_corasick::AhoCorasick::new(&pats).ok()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_finds_its_own_rule_sets() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.slot(), i, "{k:?}");
        }
    }

    #[test]
    #[allow(clippy::panic)]
    fn all_rules_compile() {
        for rule in RULES.iter() {
            if let Err(e) = regex::Regex::new(rule.re) {
                panic!("{}: {e}", rule.id);
            }
        }
    }
}
