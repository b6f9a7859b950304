"""Redaction: keep secrets and personal data out of every dataset.

`redact(text)` replaces what it finds with a typed placeholder and counts it:

  [API_KEY]      provider keys by their documented prefix and shape (below)
  [JWT]          JSON web tokens (eyJ....eyJ....sig)
  [PRIVATE_KEY]  PEM private key blocks (RSA, EC, OpenSSH, PKCS#8, PGP), also inside JSON strings
  [PASSWORD]     the password of a URL (scheme://user:PASSWORD@host) and of a connection
                 string (...;Password=PASSWORD;...)
  [TOKEN]        token-like URL query values (?token=, access_token=, api_key=, sig=, ...) and
                 Authorization header values (Bearer / Basic)
  [SECRET]       a high-entropy value assigned to a name like *secret*, *token*, *password*,
                 api_key, access_key, private_key (code, .env, YAML, JSON, CLI flags)
  [EMAIL]        e-mail addresses
  [PHONE]        phone numbers written with separators (+44 20 7946 0958, (555) 123-4567)

Provider formats ([API_KEY]), from gitleaks' default rules (config/gitleaks.toml, 2026-07) and
trufflehog's detectors (pkg/detectors/<provider>), and the providers' own token documentation:
AWS access key ids (AKIA, ASIA, ABIA, ACCA); Google (AIza API keys, GOCSPX- OAuth secrets, ya29.
tokens); GitHub (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_); GitLab (glpat- incl. routable,
glptt-, gldt-, glrt-, glcbt-, glsoat-, gloas-, glimt-, glft-, glagent-, GR1348941 runner
registration); Grafana (glsa_, glc_); Slack (xoxb-/xoxp-/xoxa-/xoxo-/xoxs-/xoxr-, xoxe refresh
and config tokens, xapp-, hooks.slack.com services/workflows/triggers); Stripe (sk_/rk_ live,
test, prod; pk_live_; whsec_); OpenAI (sk-proj-, sk-svcacct-, sk-admin-, legacy sk- + 20+
letters and digits); Anthropic (sk-ant-); Hugging Face (hf_, api_org_); npm (npm_); PyPI
(pypi-AgE...); SendGrid (SG.x.y); Twilio API keys (SK + 32 hex); Shopify (shpat_, shpss_,
shpca_, shppa_); DigitalOcean (dop_v1_, doo_v1_, dor_v1_); Azure (AD client secrets ...8Q~,
AccountKey= / SharedAccessKey= in connection strings; SAS sig= goes as a [TOKEN]); Databricks
(dapi), Doppler (dp.pt. ...), Postman (PMAK-), Pulumi (pul-), Linear (lin_api_), Heroku (HRKU-),
Terraform Cloud (.atlasv1.), age (AGE-SECRET-KEY-1), Vault (hvs., hvb.), Sentry (sntrys_,
sntryu_), Brevo (xkeysib-), Square (EAAA, sq0atp-, sq0csp-), Notion (ntn_), Perplexity (pplx-),
Groq (gsk_), Replicate (r8_), xAI (xai-), New Relic (NRAK-), Fly.io (fo1_, fm1_/fm2_),
Dynatrace (dt0c01.), PlanetScale (pscale_pw_, pscale_tkn_), Atlassian (ATATT3), Docker Hub
(dckr_pat_), Telegram bot tokens (id:AA...). Formats with no prefix (Azure storage keys outside
a connection string, Twilio auth tokens, Mailgun/Discord keys) are found only by the generic
rule when assigned to a secret-like name. tests/support/redact_heldout.py holds one synthetic token of
each format, never used to tune the rules.

Judgement calls (ordinary code must survive untouched):
- Hashes stay. Hex digests and base64 integrity strings in lockfiles (poetry.lock, Cargo.lock,
  package-lock.json, go.sum), git SHAs, UUIDs and image digests are public content ids, not
  secrets, and a model should learn what lockfiles look like. Only a value assigned to a
  secret-like *name* is redacted, whatever its alphabet (`secret_key = "<64 hex>"` goes).
- The generic rule looks at names and values together: `token = get_token()`,
  `password=password`, `api_key: str = Field(...)`, `os.environ["API_KEY"]` stay; a quoted or
  bare value is redacted only if it has at least 8 characters mixing letters and digits, or
  at least 16 characters of high entropy. Bare names like `key` or `sort_key` are not
  secret-like names.
- E-mail top-level domains must be a common generic TLD or two letters, so Python matmul
  (`q@k.transpose`) and decorators stay; `git@host` (an SSH remote, not a person) stays.
- Phone numbers need separators and 10-15 digits; dates, versions, IP addresses and plain
  integers stay.
- Provider keys need their documented prefix and a boundary before it (`task-...` is not an
  OpenAI key); a bare `sk-` is followed by letters and digits only (`sk-learn-helpers` stays);
  hex-only formats (Twilio, Shopify, Databricks) end where the hex ends (a longer run is a hash).

Speed: each rule family runs only when a cheap pre-check passes. The pre-checks are
one-character searches where one will do, substring searches on one lower-cased copy, and
regexes that start with a literal (the engine finds those with a fast literal search; a
pattern that starts with a character set is tried at every position).
"""

from __future__ import annotations

import math
import re
from collections import Counter

TYPES = ("API_KEY", "JWT", "PRIVATE_KEY", "PASSWORD", "TOKEN", "SECRET", "EMAIL", "PHONE")

_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_NAME_CHARS = frozenset(_WORD | {".", "-"})
_LOCAL_CHARS = frozenset(_WORD | {".", "%", "+", "-"})

# Provider keys and JWTs. No capturing groups, and every alternative starts with a literal (see
# Speed). A hex- or digit-only body is followed by (?![0-9A-Za-z]): a longer run is a hash.
_PROVIDER = re.compile(
    r"A(?:KIA|SIA|BIA|CCA)[0-9A-Z]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{35}|GOCSPX-[0-9A-Za-z_-]{20,}|ya29\.[0-9A-Za-z_-]{20,}"  # Google
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|gl(?:pat|dt|rt|ptt|cbt|soat|oas|imt|ft|agent)-[0-9A-Za-z_.-]{20,}|GR1348941[\w-]{20,}"  # GitLab
    r"|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|glc_[A-Za-z0-9+/]{32,}={0,3}"  # Grafana
    r"|xox[abposre][.-][0-9A-Za-z.-]{10,}|xapp-\d-[0-9A-Za-z-]{10,}"  # Slack tokens
    r"|hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{20,}"  # Slack webhooks
    r"|[sr]k_(?:live|test|prod)_[0-9A-Za-z]{16,}|pk_live_[0-9A-Za-z]{16,}|whsec_[0-9A-Za-z]{24,}"  # Stripe
    r"|sk-ant-[0-9A-Za-z_-]{20,}"  # Anthropic
    r"|sk-(?:proj|svcacct|admin|None)-[0-9A-Za-z_-]{20,}|sk-[0-9A-Za-z]{20,}(?![\w-])"  # OpenAI
    r"|hf_[A-Za-z0-9]{30,}|api_org_[A-Za-z]{30,}"  # Hugging Face
    r"|npm_[A-Za-z0-9]{36}(?![0-9A-Za-z])|pypi-AgE[\w-]{50,}"  # npm, PyPI
    r"|SG\.[\w-]{16,32}\.[\w-]{40,50}|SK[0-9a-fA-F]{32}(?![0-9A-Za-z])"  # SendGrid, Twilio
    r"|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}(?![0-9A-Za-z])|do[opr]_v1_[a-f0-9]{64}"  # Shopify, DigitalOcean
    r"|dapi[a-f0-9]{32}(?![0-9A-Za-z])|dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,}"  # Databricks, Doppler
    r"|PMAK-[a-fA-F0-9]{24}-[a-fA-F0-9]{34}|pul-[a-f0-9]{40}|lin_api_[A-Za-z0-9]{40}"  # Postman, Pulumi, Linear
    r"|HRKU-[\w-]{60}|AGE-SECRET-KEY-1[0-9A-Z]{58}|hv[sb]\.[\w-]{90,}"  # Heroku, age, Vault
    r"|sntry[us]_[\w+/=]{64,}|xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}"  # Sentry, Brevo
    r"|EAAA[\w-]{60}(?![\w+/=-])|sq0(?:atp|csp)-[\w-]{22,}"  # Square
    r"|ntn_[0-9]{11}[A-Za-z0-9]{35}|pplx-[A-Za-z0-9]{48}|gsk_[A-Za-z0-9]{52}|r8_[\w-]{37}"  # Notion, ...
    r"|xai-[A-Za-z0-9]{80}|NRAK-[A-Z0-9]{27}|fo1_[\w-]{43}|fm[12][ar]?_[\w+/]{100,}={0,3}"  # xAI, New Relic, Fly
    r"|dt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}|pscale_(?:pw|tkn|oauth)_[\w=.-]{32,64}"  # Dynatrace, PlanetScale
    r"|ATATT3[\w=-]{180,}|dckr_pat_[\w-]{27,}"  # Atlassian, Docker Hub
    r"|eyJ[0-9A-Za-z_-]{8,}\.eyJ[0-9A-Za-z_-]{8,}\.[0-9A-Za-z_-]*"  # JWT
)
# Gates for _PROVIDER: the rarer character inside each prefix ('J', 'A', '_', '-', '.'), then
# the prefix checked backwards; or a literal-led search for prefixes without such a character.
# Each gate starts with a literal, so the regex engine finds candidates with a fast literal
# search; one pattern over a set of anchor characters would test every position (about 2x
# slower in total). The '_' and '-' gates first look ahead for a token-like run, which most
# underscores and dashes in code are not followed by.
_PROVIDER_GATES = tuple(
    re.compile(p).search
    for p in (
        r"J(?<=eyJ)",
        r"A(?:KIA|SIA|BIA|CCA|Iza|TATT3|(?<=EA)AA[\w-]{60})",
        r"K(?<=SK)[0-9a-fA-F]{32}",
        r"dapi[0-9a-f]{32}",
        r"GR1348941",
        r"_(?=[\w+/-]{16})(?<=[a-z0-9]_)(?:(?<=gh[pousr]_)|(?<=github_pat_)|(?<=hf_)|(?<=api_org_)|(?<=k_live_)"
        r"|(?<=k_test_)|(?<=k_prod_)|(?<=whsec_)|(?<=npm_)|(?<=shp.._)|(?<=_v1_)|(?<=lin_api_)|(?<=glsa_)"
        r"|(?<=glc_)|(?<=sntry._)|(?<=ntn_)|(?<=gsk_)|(?<=r8_)|(?<=fo1_)|(?<=fm.._)|(?<=fm._)|(?<=pscale_.._)"
        r"|(?<=pscale_..._)|(?<=pscale_oauth_)|(?<=dckr_pat_))",
        r"-(?=[\w.-]{10})(?<=[A-Za-z0-9]-)(?:(?<=sk-)|(?<=GOCSPX-)|(?<=gl...-)|(?<=gl..-)|(?<=gl....-)"
        r"|(?<=glagent-)|(?<=xox.-)|(?<=xapp-)|(?<=pypi-)|(?<=PMAK-)|(?<=pul-)|(?<=HRKU-)|(?<=KEY-)"
        r"|(?<=xkeysib-)|(?<=sq0...-)|(?<=pplx-)|(?<=xai-)|(?<=NRAK-))",
        r"\.(?<=[9sGptbx1]\.)(?:(?<=ya29\.)|(?<=hooks\.)|(?<=SG\.)|(?<=dp\.)|(?<=hv[sb]\.)|(?<=xoxe\.)"
        r"|(?<=dt0c01\.))",
    )
)
# Prefixes that are not at the start of the token: Terraform Cloud (name.atlasv1.secret) and
# Telegram bot tokens (bot id:AA...); each is gated by a literal-led search.
_ATLAS = re.compile(r"(?<![\w.])[a-z0-9]{14}\.atlasv1\.[\w=-]{60,70}")
_TELEGRAM = re.compile(r"(?<![\w:])[0-9]{5,16}:AA[\w-]{33}(?![\w-])")
_ATLAS_GATE = re.compile(r"v1\.(?<=atlasv1\.)").search
_TELEGRAM_GATE = re.compile(r":AA[\w-]{33}").search
# Azure AD client secrets (xxx8Q~...) and storage account keys inside connection strings.
_AZURE_CLIENT = re.compile(r"(?<![\w~.-])[\w~.-]{3}\dQ~[\w~.-]{31,34}(?![\w~.-])")
_AZURE_ACCOUNT = re.compile(r"(AccountKey|SharedAccessKey)=([A-Za-z0-9+/]{30,}={0,2})")
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----"
    r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:-]*)",
    re.S,
)
_URL_USERINFO = re.compile(r"://([^\s:/@'\"<>]{0,128}):([^\s/@'\"<>\[\]]{1,256})@(?=[\w.\[-])")
_URL_QUERY = re.compile(
    r"(?i)[?&]((?:access_|refresh_|id_|auth_|session_|private_)?token|api[_-]?key|apikey|key|sig|signature"
    r"|secret|client_secret|password|passwd|pwd|x-amz-signature|x-amz-credential|x-amz-security-token)"
    r"=([^&#\s'\"<>{}()$\[\]]{6,})"
)
_AUTH_HEADER = re.compile(r"(B(?:earer|asic|EARER|ASIC)|b(?:earer|asic))[ \t]+([A-Za-z0-9._~+/-]{16,}=*)")
_CONN_PASSWORD = re.compile(r"(?i)[;\"'][ \t]*(password|pwd)=([^;'\"\s()\[\]]{1,256})(?=;|[\"']|$)", re.M)
# Generic assignments: the name is found by plain substring search (_SECRET_WORDS), widened to
# the whole name, checked against _NAME, then the assignment and value are matched after it.
_SECRET_WORDS = ("secret", "token", "passw", "pwd", "credential", "key")
_NAME = re.compile(
    r"(?i)-{0,2}[A-Za-z0-9_.-]*(?:secret|token|passw(?:or)?d|passphrase|pwd|credentials?|api[_-]?key"
    r"|apikey|(?:access|private|auth|account|signing|encryption|master|client|session)[_-]?key)"
    r"[A-Za-z0-9_]*"
)
_NAME_REST = re.compile(r"[A-Za-z0-9_]*")
_ASSIGN_TAIL = re.compile(
    r"(['\"]?[ \t]*(?::=|=>|[:=])[ \t]*)(?:(['\"])([^'\"\n\\]{1,512})\2|([^\s'\"`,;(){}\[\]]{1,512}))"
)
_EMAIL_DOMAIN = re.compile(
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+)"
    r"(com|org|net|edu|gov|mil|int|io|ai|dev|app|info|biz|me|tech|cloud|online|site|xyz|email|mail"
    r"|name|pro|inc|company|team|[a-z]{2})(?![\w-]|\.\w)",
    re.I,
)
# Gate for _PHONE: literal-led pieces every phone number contains; _PHONE then runs in a window.
# _PHONE_GATES is the same set as separate patterns, for the fast "any?" check (see above).
_PHONE_PIECES = (r"-\d{3}[-.]\d{4}", r"\.\d{3}[-.]\d{4}", r"\+\d{1,3}[ .(-]", r"\(\d{3}\)[ ]?\d{3}[ .-]\d{4}")
_PHONE_GATE = re.compile("|".join(_PHONE_PIECES))
_PHONE_GATES = tuple(re.compile(p).search for p in _PHONE_PIECES)
# Gate for _URL_QUERY: a query parameter (?name= or &name=); SQL placeholders (?, ?) do not pass.
_QUERY_GATES = (re.compile(r"\?[\w-]+=").search, re.compile(r"&[\w-]+=").search)
_PHONE = re.compile(
    r"(?<![\w.+/-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"
    r"|\(\d{3}\)[ ]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w.-]*\d)"
)

_PLACEHOLDER_VALUES = {"changeme", "password", "secret", "token", "none", "null", "true", "false", "undefined"}


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_secret(value: str, quoted: bool = False) -> bool:
    """Is a value assigned to a secret-like name a real secret (not a name, a call, a template)?"""
    v = value.strip()
    if len(v) < 8 or v.lower() in _PLACEHOLDER_VALUES or v.startswith("[") or "{" in v or "$" in v:
        return False
    if "://" in v or v.startswith(("/", "./", "../", "~/")):  # URLs and paths (URL rules cover credentials)
        return False
    if re.fullmatch(r"[xX*.•<>_-]+|<[^>]*>|your[\w-]*|\w*_?here", v):  # placeholders: xxxx, <token>, your-key-here
        return False
    has_digit = any(c.isdigit() for c in v)
    if has_digit and any(c.isalpha() for c in v):
        return True
    if has_digit:  # digits without letters: a number
        return False
    if re.fullmatch(r"[A-Za-z_][A-Za-z_.-]*", v):  # looks like a name (settings.API_KEY, DB_PASSWORD)
        # bare, it is one; quoted, only a long mixed-case run of letters may be a secret
        if not quoted or not v.isalpha() or v.islower() or v.isupper():
            return False
    return len(v) >= 16 and entropy(v) >= 3.5


class Redactor:
    """Redacts texts; counts what it redacted, by type, across every call."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def _count(self, kind: str) -> str:
        self.counts[kind] += 1
        return f"[{kind}]"

    def _provider(self, m: re.Match) -> str:
        start = m.start()
        if start and m.string[start - 1] in _WORD:  # inside a longer word: not a key
            return m.group(0)
        return self._count("JWT" if m.group(0).startswith("eyJ") else "API_KEY")

    def _header(self, m: re.Match) -> str:
        if m.start() and m.string[m.start() - 1] in _WORD:
            return m.group(0)
        return f"{m.group(1)} {self._count('TOKEN')}" if looks_secret(m.group(2)) else m.group(0)

    def __call__(self, text: str) -> str:
        """The text with every secret and personal datum replaced by its placeholder."""
        if not text:
            return text
        c = self._count
        if "PRIVATE KEY" in text:
            text = _PEM.sub(lambda m: c("PRIVATE_KEY"), text)
        if _any(_PROVIDER_GATES, text):
            text = _PROVIDER.sub(self._provider, text)
        if _ATLAS_GATE(text):
            text = _ATLAS.sub(lambda m: c("API_KEY"), text)
        if _TELEGRAM_GATE(text):
            text = _TELEGRAM.sub(lambda m: c("API_KEY"), text)
        if "~" in text and "Q~" in text:  # a one-character search is several times faster
            text = _AZURE_CLIENT.sub(lambda m: c("API_KEY"), text)
        if "Key=" in text:
            text = _AZURE_ACCOUNT.sub(lambda m: f"{m.group(1)}={c('API_KEY')}", text)
        if "://" in text:
            text = _URL_USERINFO.sub(lambda m: f"://{m.group(1)}:{c('PASSWORD')}@", text)
        if "=" in text and _any(_QUERY_GATES, text):
            text = _URL_QUERY.sub(lambda m: f"{m.group(0)[0]}{m.group(1)}={c('TOKEN')}", text)
        low = _lower(text)  # one lower-cased copy serves the case-insensitive gates below
        before = text
        if "ssword=" in low or "wd=" in low:
            text = _CONN_PASSWORD.sub(lambda m: m.group(0)[: m.start(2) - m.start()] + c("PASSWORD"), text)
        if "earer " in low or "asic " in low:
            text = _AUTH_HEADER.sub(self._header, text)
        text = self._assignments(text, low if text is before else _lower(text))
        if "@" in text:
            text = self._emails(text)
        if _any(_PHONE_GATES, text):
            text = self._phones(text)
        return text

    def _phones(self, text: str) -> str:
        parts, pos = [], 0
        for gate in _PHONE_GATE.finditer(text):
            if gate.start() < pos:
                continue
            m = _PHONE.search(text, max(pos, gate.start() - 16), gate.end() + 48)
            if m and m.end() <= len(text) and 10 <= sum(c.isdigit() for c in m.group(0)) <= 15:
                parts += [text[pos : m.start()], self._count("PHONE")]
                pos = m.end()
        return "".join(parts) + text[pos:] if parts else text

    def _assignments(self, text: str, low: str) -> str:
        spans: dict[int, tuple[int, int]] = {}  # name start -> (value start, value end)
        for word in _SECRET_WORDS:
            i = low.find(word)
            while i >= 0:
                # The assignment after the name is checked first: most names (dict keys, key=
                # arguments, tokens of a parser) are not assigned a value, and two C-level
                # matches reject them before the Python loop that widens the name.
                at = start = i
                name_rest = _NAME_REST.match(text, i + len(word))
                assert name_rest is not None  # the pattern matches the empty string too
                end = name_rest.end()
                m = _ASSIGN_TAIL.match(text, end)
                i = low.find(word, end)
                if not m or (word == "key" and (not at or text[at - 1] not in _NAME_CHARS)):
                    continue  # a name that is just "key..." is not secret-like (see _NAME)
                while start > 0 and text[start - 1] in _NAME_CHARS and at - start < 64:
                    start -= 1
                if start in spans or (start > 0 and text[start - 1] in _WORD) or not _NAME.fullmatch(text, start, end):
                    continue
                group = 3 if m.group(3) is not None else 4
                if group == 4 and text[m.end() : m.end() + 1] in ("(", "["):  # a call or a subscript
                    continue
                if looks_secret(m.group(group), quoted=group == 3):
                    spans[start] = (m.start(group), m.end(group))
        if not spans:
            return text
        parts, pos = [], 0
        for vs, ve in sorted(spans.values()):
            if vs < pos:
                continue
            parts += [text[pos:vs], self._count("SECRET")]
            pos = ve
        return "".join(parts) + text[pos:]

    def _emails(self, text: str) -> str:
        parts, pos, i = [], 0, text.find("@")
        while i >= 0:
            start = i
            while start > 0 and text[start - 1] in _LOCAL_CHARS and i - start < 64:
                start -= 1
            while start < i and not text[start].isalnum():  # a local part starts with a letter or digit
                start += 1
            m = _EMAIL_DOMAIN.match(text, i + 1)
            if m and start < i and start >= pos and text[start:i].lower() != "git":  # git@host: an SSH remote
                parts += [text[pos:start], self._count("EMAIL")]
                pos = m.end()
            i = text.find("@", max(i + 1, pos))
        return "".join(parts) + text[pos:] if parts else text


_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def _lower(text: str) -> str:
    """text lower-cased, index for index (a few non-ASCII letters change length when lowered)."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _any(searches, text: str) -> bool:
    for search in searches:
        if search(text):
            return True
    return False


def redact(text: str, counts: Counter | None = None) -> str:
    """Redact one text; add what was found to `counts` (by type) if given."""
    r = Redactor()
    out = r(text)
    if counts is not None:
        counts.update(r.counts)
    return out
