"""A labelled corpus for redaction: planted secrets of every type, and ordinary code that must
survive unchanged. The secrets are generated from a seeded RNG in their providers' formats (no
real credential is written down anywhere); tests and bench/curation.py measure recall and
false positives on it.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
URLSAFE = ALNUM + "-_"


@dataclass(frozen=True)
class Planted:
    name: str  # what was planted, e.g. "github_token"
    placeholder: str  # the placeholder expected in its place, e.g. "API_KEY"
    secret: str  # the secret text that must disappear
    text: str  # the secret inside some realistic context


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _mixed(rng: random.Random, alphabet: str, n: int) -> str:
    """Random text with at least one digit and one letter (as real keys have)."""
    while True:
        s = _rand(rng, alphabet, n)
        if any(c.isdigit() for c in s) and any(c.isalpha() for c in s):
            return s


def _jwt(rng: random.Random) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    head = part({"alg": "HS256", "typ": "JWT"})
    body = part({"sub": str(rng.randrange(10**9)), "name": "user", "iat": 1700000000 + rng.randrange(10**6)})
    return f"{head}.{body}.{_rand(rng, URLSAFE, 43)}"


def _pem(rng: random.Random, label: str) -> str:
    lines = [_rand(rng, ALNUM + "+/", 64) for _ in range(6)]
    return f"-----BEGIN {label}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {label}PRIVATE KEY-----"


def planted_secrets(seed: int = 0) -> list[Planted]:
    """Every type of secret, each in a few realistic contexts."""
    rng = random.Random(seed)
    out: list[Planted] = []

    def add(name: str, placeholder: str, secret: str, *templates: str) -> None:
        for t in templates:
            out.append(Planted(name, placeholder, secret, t.replace("@S", secret)))

    add(
        "aws_access_key_id",
        "API_KEY",
        "AKIA" + _rand(rng, UPPER_DIGITS, 16),
        'client = boto3.client("s3", aws_access_key_id="@S")',
        "export AWS_ACCESS_KEY_ID=@S",
    )
    add(
        "aws_secret_access_key",
        "SECRET",
        _mixed(rng, ALNUM + "/+", 40),
        "aws_secret_access_key = @S",
        'AWS_SECRET_ACCESS_KEY="@S"',
    )
    add(
        "gcp_api_key",
        "API_KEY",
        "AIza" + _rand(rng, URLSAFE, 35),
        'fetch("https://maps.googleapis.com/maps/api/js?libraries=places&callback=init", {key: "@S"})',
        "GOOGLE_API_KEY=@S",
    )
    add("gcp_oauth_secret", "API_KEY", "GOCSPX-" + _rand(rng, URLSAFE, 28), '{"client_secret": "@S"}')
    add("gcp_access_token", "API_KEY", "ya29." + _rand(rng, URLSAFE, 60), "creds.token = '@S'")
    add("gcp_service_account_key", "PRIVATE_KEY", _pem(rng, ""), '{"type": "service_account", "private_key": "@S"}')
    add(
        "azure_storage_key",
        "API_KEY",
        _rand(rng, ALNUM + "+/", 86) + "==",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=@S;EndpointSuffix=core.windows.net",
    )
    add(
        "azure_client_secret",
        "API_KEY",
        _rand(rng, ALNUM, 3) + "8Q~" + _rand(rng, ALNUM + "_.-", 34),
        "credential = ClientSecretCredential(tenant, client_id, '@S')",
    )
    add(
        "github_token",
        "API_KEY",
        "ghp_" + _rand(rng, ALNUM, 36),
        "git clone https://@S@github.com/org/repo.git",
        "headers = {'Authorization': 'token @S'}",
    )
    add("github_fine_grained", "API_KEY", "github_pat_" + _rand(rng, ALNUM + "_", 82), "GH_TOKEN=@S gh pr list")
    add("gitlab_token", "API_KEY", "glpat-" + _rand(rng, URLSAFE, 20), 'gitlab.Gitlab(url, private_token="@S")')
    add(
        "slack_bot_token",
        "API_KEY",
        "xoxb-" + "-".join(_rand(rng, string.digits, 12) for _ in range(2)) + "-" + _rand(rng, ALNUM, 24),
        'WebClient(token="@S")',
    )
    add(
        "slack_webhook",
        "API_KEY",
        "hooks.slack.com/services/T"
        + _rand(rng, UPPER_DIGITS, 8)
        + "/B"
        + _rand(rng, UPPER_DIGITS, 8)
        + "/"
        + _rand(rng, ALNUM, 24),
        "requests.post('https://@S', json=msg)",
    )
    add("stripe_secret", "API_KEY", "sk_live_" + _rand(rng, ALNUM, 24), "stripe.api_key = '@S'")
    add("stripe_webhook_secret", "API_KEY", "whsec_" + _rand(rng, ALNUM, 32), "endpoint_secret = '@S'")
    add("openai_key", "API_KEY", "sk-proj-" + _rand(rng, URLSAFE, 48), 'OpenAI(api_key="@S")', "OPENAI_API_KEY=@S")
    add(
        "anthropic_key",
        "API_KEY",
        "sk-ant-api03-" + _rand(rng, URLSAFE, 93) + "AA",
        "anthropic.Anthropic(api_key='@S')",
    )
    add("huggingface_token", "API_KEY", "hf_" + _rand(rng, ALNUM, 34), "huggingface-cli login --token @S")
    add("jwt", "JWT", _jwt(rng), "Authorization: Bearer @S", "const session = '@S';")
    add("rsa_private_key", "PRIVATE_KEY", _pem(rng, "RSA "), "key = '''@S'''")
    add("openssh_private_key", "PRIVATE_KEY", _pem(rng, "OPENSSH "), "@S")
    add(
        "postgres_password",
        "PASSWORD",
        _mixed(rng, ALNUM, 14),
        'DATABASE_URL = "postgresql://app:@S@db.internal:5432/prod"',
    )
    add(
        "mongodb_password",
        "PASSWORD",
        _mixed(rng, ALNUM + "!*", 12),
        "mongodb+srv://admin:@S@cluster0.mongodb.net/test",
    )
    add(
        "sqlserver_password",
        "PASSWORD",
        "Winter" + str(rng.randrange(1000, 9999)) + "!",
        'conn = "Server=tcp:db.example.com,1433;Database=app;User Id=sa;Password=@S;Encrypt=True;"',
    )
    add("url_token", "TOKEN", _mixed(rng, ALNUM, 32), "https://api.example.com/v1/items?limit=10&access_token=@S")
    add(
        "url_signature",
        "TOKEN",
        _mixed(rng, ALNUM + "%", 40),
        "https://bucket.s3.amazonaws.com/f.zip?X-Amz-Expires=300&X-Amz-Signature=@S",
    )
    add(
        "bearer_token",
        "TOKEN",
        _mixed(rng, ALNUM + "._-", 40),
        "curl -H 'Authorization: Bearer @S' https://api.example.com",
    )
    add(
        "generic_secret",
        "SECRET",
        _mixed(rng, ALNUM, 32),
        "SECRET_KEY = '@S'",
        "client_secret: @S",
        '{"api_token": "@S"}',
        "--password=@S",
        'db_password := "@S"',
    )
    add("hex_secret", "SECRET", _rand(rng, "0123456789abcdef", 64), 'webhook_signing_key = "@S"')
    add(
        "email",
        "EMAIL",
        "jane.doe" + str(rng.randrange(100)) + "@example.com",
        "# maintainer: @S",
        'send_mail(to="@S")',
    )
    add("email_plus", "EMAIL", "ops+alerts@mail.company.io", "Contact @S for access.")
    add("phone_us", "PHONE", "(555) 867-5309", "Call @S after 5pm.")
    add("phone_intl", "PHONE", "+44 20 7946 0958", 'PHONE = "@S"')
    add("phone_dashes", "PHONE", "415-555-2671", "on-call: @S")
    return out


ORDINARY_CODE: list[str] = [
    # Lockfile hashes: kept on purpose (see learning/data/redact.py).
    '[[package]]\nname = "requests"\nversion = "2.32.3"\n[package.files]\nhash = '
    '"sha256:70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6"\n',
    '[[package]]\nname = "serde"\nversion = "1.0.210"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\n'
    'checksum = "c8e3592472072e6e22e0a54d5904d9febf8508f65fb8552499a1abc7d1078c3a"\n',
    '"node_modules/lodash": {\n  "version": "4.17.21",\n  "resolved": "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz",\n'
    '  "integrity": "sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg=="\n}',
    "golang.org/x/net v0.25.0 h1:d/OCCoBEUq33pjydKrGQhw7IlUPI2Oylr+8qLx49kac=\n",
    "FROM python:3.11-slim@sha256:2ec5a4a5c3e919570f57675471f081d6299668d909feabd8d4803c6c61af666c\n",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8\nAuthor: CI Bot <noreply>\n",
    'request_id = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"\n',
    # Names that look secret, values that are not.
    'token = get_token()\npassword = getpass.getpass("Password: ")\nlogin(user=user, password=password)\n',
    'api_key = os.environ["OPENAI_API_KEY"]\nSECRET_KEY = os.getenv("SECRET_KEY")\n',
    'class Settings(BaseModel):\n    api_key: str = Field(..., description="your API key")\n    password: SecretStr\n',
    'token = request.headers.get("Authorization")\nif token is None:\n    raise Unauthorized()\n',
    'DB_PASSWORD = settings.DATABASE_PASSWORD\nsecret_name = "db-credentials"\nTOKEN_HEADER = "X-Auth-Token"\n',
    "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())\n",
    'tokenizer = AutoTokenizer.from_pretrained(path)\ntokens = tokenizer(text)["input_ids"]\nmax_tokens = 512\n',
    "cache_key = f\"{user_id}:{page}\"\nsort_key = lambda r: r.created\nprimary_key = 'id'\n",
    'token_url = "https://oauth2.googleapis.com/token"\nsecrets_dir = "/var/run/secrets/kubernetes.io/token"\n',
    'PASSWORD_MIN_LENGTH = 12\npassword = "changeme"  # placeholder\nAPI_KEY = "<your-api-key>"\n',
    "env:\n  API_TOKEN: ${{ secrets.API_TOKEN }}\n  PASSWORD: $DB_PASSWORD\n",
    # Emails and phones that are not.
    "@app.route('/users/<int:user_id>')\n@login_required\ndef show(user_id):\n    return render(user_id)\n",
    "scores = q@k.transpose(-2, -1) / math.sqrt(d)\nout = x@self.w1 + self.b1\n",
    "git remote add origin git@github.com:org/learnloop.git\n",
    "npm install @types/node@20.11.5 react@18.2.0\n",
    "version = '1.2.3'\nreleased = '2026-11-22'\nhost = '192.168.100.254'\nport = 5432\n",
    "TIMEOUT_MS = 1234567890\nrange(100, 200, 300)\nsleep(0.25)\nx = 10 - 5 - 3\n",
    "ISBN 978-3-16-148410-0\nmatrix = [[1, 2, 3], [4, 5, 6]]\n",
    # Providers' prefixes inside ordinary words.
    "subtask-runner-for-integration-tests = 1\npip install scikit-learn\nask-user-for-confirmation-before-deleting\n",
    "def hf_load_dataset_from_the_hub_cache_directory():\n    pass\n",
    # URLs without credentials.
    "resp = httpx.get('https://api.example.com/v1/search?q=learnloop&page=2&sort=stars')\n",
    'url = f"https://api.example.com/items?token={token}&limit={n}"\n',
    'image = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="\n',
    # Regexes, SQL, shell.
    r'EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")' + "\n",
    "SELECT id, email FROM users WHERE created > now() - interval '7 days';\n",
    'for f in *.py; do python -m black "$f"; done\n',
    "bearer = request.headers['Authorization'].split()[1]\n",
]
