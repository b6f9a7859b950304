"""A held-out corpus for redaction, kept apart from the one the rules were tuned on
(tests/support/redact_corpus.py): synthetic secrets in the token formats that gitleaks' default rules
(config/gitleaks.toml) and trufflehog's detectors look for, each generated from a seed with its
provider's prefix, alphabet and length (nothing here is, or was ever, a real credential), placed
in contexts with no secret-like name, so that only the format can give them away. Beside them,
realistic ordinary text that must survive byte for byte: lockfiles, git SHAs, UUIDs, digests,
base64 blobs and identifiers that begin like a provider's prefix.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid

from tests.support.redact_corpus import Planted

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"
UPPER_ALNUM = string.ascii_uppercase + string.digits
DIGITS = string.digits

# Contexts that name nothing secret: only the value's format can give it away.
CONTEXTS = (
    'client = Client("@S")',
    '    "value": "@S",',
    "value: @S",
    "2026-11-30 12:00:01 INFO uploading with @S to the bucket",
    "args = ['--with', '@S', '--verbose']",
    "Paste `@S` into the settings page and press save.",
    "export VALUE=@S",
    '<param name="v" value="@S"/>',
)


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _jwt(rng: random.Random, header: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    body = {"iss": "https://auth.example.net", "sub": str(uuid.UUID(int=rng.getrandbits(128))), "exp": 1790000000}
    return f"{part(header)}.{part(body)}.{_r(rng, URLSAFE, 86)}"


def _pem(rng: random.Random, label: str) -> str:
    body = "\n".join(_r(rng, B64, 64) for _ in range(5))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"


def _formats(rng: random.Random) -> list[tuple[str, str, str]]:
    """(name, placeholder, secret) for every format covered."""
    r = lambda alphabet, n: _r(rng, alphabet, n)  # noqa: E731
    api = [
        ("aws_akia", "AKIA" + r("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        ("aws_asia", "ASIA" + r("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        ("aws_abia", "ABIA" + r("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        ("aws_acca", "ACCA" + r("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        *((f"github_{p}", f"{p}_" + r(ALNUM, 36)) for p in ("ghp", "gho", "ghu", "ghs", "ghr")),
        ("github_pat", "github_pat_" + r(ALNUM, 22) + "_" + r(ALNUM, 59)),
        ("gitlab_pat", "glpat-" + r(URLSAFE, 20)),
        ("gitlab_pat_routable", "glpat-" + r(URLSAFE, 36) + ".01." + r(string.ascii_lowercase + DIGITS, 9)),
        ("gitlab_pipeline_trigger", "glptt-" + r(HEX, 40)),
        ("gitlab_runner_registration", "GR1348941" + r(URLSAFE, 20)),
        ("gitlab_deploy", "gldt-" + r(URLSAFE, 20)),
        ("gitlab_cbt", "glcbt-" + r(HEX, 2) + "_" + r(URLSAFE, 20)),
        ("slack_bot", "xoxb-" + r(DIGITS, 12) + "-" + r(DIGITS, 13) + "-" + r(ALNUM, 24)),
        ("slack_user", "xoxp-" + "-".join(r(DIGITS, 12) for _ in range(3)) + "-" + r(HEX, 32)),
        ("slack_config", "xoxe.xoxp-1-" + r(UPPER_ALNUM, 164)),
        ("slack_refresh", "xoxe-1-" + r(UPPER_ALNUM, 146)),
        ("slack_app", "xapp-1-A" + r(UPPER_ALNUM, 10) + "-" + r(DIGITS, 13) + "-" + r(HEX, 64)),
        (
            "slack_webhook",
            "https://hooks.slack.com/services/T" + r(UPPER_ALNUM, 10) + "/B" + r(UPPER_ALNUM, 10) + "/" + r(ALNUM, 24),
        ),
        (
            "slack_workflow",
            "https://hooks.slack.com/workflows/T"
            + r(UPPER_ALNUM, 10)
            + "/A"
            + r(UPPER_ALNUM, 10)
            + "/"
            + r(DIGITS, 18)
            + "/"
            + r(ALNUM, 24),
        ),
        ("stripe_sk_live", "sk_live_" + r(ALNUM, 99)),
        ("stripe_rk_live", "rk_live_" + r(ALNUM, 24)),
        ("stripe_sk_test", "sk_test_" + r(ALNUM, 24)),
        ("stripe_whsec", "whsec_" + r(ALNUM, 32)),
        ("gcp_api_key", "AIza" + r(URLSAFE, 35)),
        ("gcp_oauth_secret", "GOCSPX-" + r(URLSAFE, 28)),
        ("gcp_access_token", "ya29.a0" + r(URLSAFE, 150)),
        ("openai_project", "sk-proj-" + r(URLSAFE, 74) + "T3BlbkFJ" + r(URLSAFE, 74)),
        ("openai_service_account", "sk-svcacct-" + r(URLSAFE, 58) + "T3BlbkFJ" + r(URLSAFE, 58)),
        ("openai_legacy", "sk-" + r(ALNUM, 20) + "T3BlbkFJ" + r(ALNUM, 20)),
        ("anthropic", "sk-ant-api03-" + r(URLSAFE, 93) + "AA"),
        ("anthropic_admin", "sk-ant-admin01-" + r(URLSAFE, 93) + "AA"),
        ("huggingface", "hf_" + r(string.ascii_letters, 34)),
        ("huggingface_org", "api_org_" + r(string.ascii_letters, 34)),
        ("npm", "npm_" + r(ALNUM, 36)),
        ("pypi", "pypi-AgEIcHlwaS5vcmc" + r(URLSAFE, 160)),
        ("sendgrid", "SG." + r(URLSAFE, 22) + "." + r(URLSAFE, 43)),
        ("twilio_api_key", "SK" + r(HEX, 32)),
        *((f"shopify_{p}", f"{p}_" + r(HEX, 32)) for p in ("shpat", "shpss", "shpca", "shppa")),
        *((f"digitalocean_{p}", f"{p}_v1_" + r(HEX, 64)) for p in ("dop", "doo", "dor")),
        ("azure_client_secret", r(ALNUM, 3) + "8Q~" + r(ALNUM + "_~.-", 34)),
        ("databricks", "dapi" + r(HEX, 32)),
        ("doppler", "dp.pt." + r(ALNUM, 43)),
        ("postman", "PMAK-" + r(HEX, 24) + "-" + r(HEX, 34)),
        ("pulumi", "pul-" + r(HEX, 40)),
        ("linear", "lin_api_" + r(ALNUM, 40)),
        ("heroku", "HRKU-AA" + r(URLSAFE, 58)),
        ("terraform_cloud", r(string.ascii_lowercase + DIGITS, 14) + ".atlasv1." + r(ALNUM, 67)),
        ("age_secret_key", "AGE-SECRET-KEY-1" + r("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)),
        ("vault_service", "hvs." + r(URLSAFE, 95)),
        ("vault_batch", "hvb." + r(URLSAFE, 140)),
        ("grafana_service_account", "glsa_" + r(ALNUM, 32) + "_" + r(HEX, 8)),
        ("grafana_cloud", "glc_" + r(B64, 80)),
        ("sentry_user", "sntryu_" + r(HEX, 64)),
        ("brevo", "xkeysib-" + r(HEX, 64) + "-" + r(ALNUM, 16)),
        ("square_access", "EAAA" + r(URLSAFE, 60)),
        ("square_oauth_secret", "sq0csp-" + r(URLSAFE, 43)),
        ("notion", "ntn_" + r(DIGITS, 11) + r(ALNUM, 35)),
        ("perplexity", "pplx-" + r(ALNUM, 48)),
        ("groq", "gsk_" + r(ALNUM, 52)),
        ("replicate", "r8_" + r(ALNUM, 37)),
        ("xai", "xai-" + r(ALNUM, 80)),
        ("new_relic", "NRAK-" + r(UPPER_ALNUM, 27)),
        ("flyio", "fo1_" + r(URLSAFE, 43)),
        ("dynatrace", "dt0c01." + r(UPPER_ALNUM, 24) + "." + r(UPPER_ALNUM, 64)),
        ("planetscale_password", "pscale_pw_" + r(URLSAFE, 43)),
        ("planetscale_token", "pscale_tkn_" + r(URLSAFE, 43)),
        ("atlassian", "ATATT3" + r(URLSAFE, 186)),
        ("docker_hub", "dckr_pat_" + r(URLSAFE, 27)),
        ("telegram_bot", r(DIGITS, 10) + ":AA" + r(URLSAFE, 33)),
    ]
    out = [(name, "API_KEY", secret) for name, secret in api]
    out += [
        ("jwt_rs256", "JWT", _jwt(rng, {"alg": "RS256", "kid": r(ALNUM, 16), "typ": "JWT"})),
        ("jwt_es256", "JWT", _jwt(rng, {"typ": "JWT", "alg": "ES256"})),
        ("private_key_ec", "PRIVATE_KEY", _pem(rng, "EC PRIVATE KEY")),
        ("private_key_pkcs8", "PRIVATE_KEY", _pem(rng, "PRIVATE KEY")),
        ("private_key_encrypted", "PRIVATE_KEY", _pem(rng, "ENCRYPTED PRIVATE KEY")),
        ("private_key_dsa", "PRIVATE_KEY", _pem(rng, "DSA PRIVATE KEY")),
    ]
    return out


def heldout_secrets(seed: int = 1234) -> list[Planted]:
    """Every covered format, each in two contexts chosen from CONTEXTS; then URLs and connection
    strings whose password or key must go."""
    rng = random.Random(seed)
    out = []
    for name, placeholder, secret in _formats(rng):
        for template in rng.sample(CONTEXTS, 2):
            out.append(Planted(name, placeholder, secret, template.replace("@S", secret)))
    pw = "".join(rng.choice(ALNUM) for _ in range(16)) + "9"
    key = _r(rng, B64, 86) + "=="
    for name, placeholder, secret, text in (
        ("mysql_url", "PASSWORD", pw, f"engine = create_engine('mysql+pymysql://root:{pw}@10.0.0.5:3306/shop')"),
        ("redis_url_no_user", "PASSWORD", pw, f"REDIS_URL=redis://:{pw}@cache.internal:6379/0"),
        ("amqp_url", "PASSWORD", pw, f'broker_url = "amqps://worker:{pw}@mq.example.net/vhost"'),
        ("mongodb_url", "PASSWORD", pw, f"mongodb://app:{pw}@db1.example.net,db2.example.net/app?replicaSet=rs0"),
        (
            "azure_storage_conn",
            "API_KEY",
            key,
            f"DefaultEndpointsProtocol=https;AccountName=logs;AccountKey={key};EndpointSuffix=core.windows.net",
        ),
        (
            "azure_service_bus",
            "API_KEY",
            key[:44],
            f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={key[:44]}",
        ),
        (
            "azure_sas",
            "TOKEN",
            key[:43] + "%3D",
            f"https://acct.blob.core.windows.net/c/b.bin?sv=2022-11-02&se=2026-12-01&sp=r&sig={key[:43]}%3D",
        ),
    ):
        out.append(Planted(name, placeholder, secret, text))
    return out


def realistic_code(seed: int = 99) -> list[str]:
    """Ordinary text that must stay: content ids (hashes, SHAs, UUIDs, digests, integrity
    strings, base64 blobs) and identifiers that begin like a provider's prefix."""
    rng = random.Random(seed)
    r = lambda alphabet, n: _r(rng, alphabet, n)  # noqa: E731
    b64 = lambda n: base64.b64encode(rng.randbytes(n)).decode()  # noqa: E731
    sha = lambda: r(HEX, 40)  # noqa: E731
    out = []
    for _ in range(6):
        name, v = (
            rng.choice(["left-pad", "chalk", "ms", "debug", "yaml"]),
            f"{rng.randrange(1, 9)}.{rng.randrange(20)}.{rng.randrange(9)}",
        )
        out += [
            f'{name}@^{v}:\n  version "{v}"\n  resolved "https://registry.yarnpkg.com/{name}/-/{name}-{v}.tgz#{sha()}"\n'
            f"  integrity sha512-{b64(64)}\n",
            f'    "node_modules/{name}": {{\n      "version": "{v}",\n      "integrity": "sha512-{b64(64)}",\n      "dev": true\n    }},\n',
            f"  /{name}@{v}:\n    resolution: {{integrity: sha512-{b64(64)}}}\n    engines: {{node: '>=14'}}\n",
            f'[[package]]\nname = "{name}"\nversion = "{v}"\nfiles = [\n    {{file = "{name}-{v}.tar.gz", hash = "sha256:{r(HEX, 64)}"}},\n]\n',
            f"{name}=={v} \\\n    --hash=sha256:{r(HEX, 64)} \\\n    --hash=sha256:{r(HEX, 64)}\n",
            f"github.com/org/{name} v{v} h1:{b64(32)}\ngithub.com/org/{name} v{v}/go.mod h1:{b64(32)}\n",
            f'[[package]]\nname = "{name}"\nversion = "{v}"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\n'
            f'checksum = "{r(HEX, 64)}"\n',
            f'provider "registry.terraform.io/hashicorp/aws" {{\n  version = "{v}"\n  hashes = [\n    "h1:{b64(32)}",\n'
            f'    "zh:{r(HEX, 64)}",\n  ]\n}}\n',
            f"      - uses: actions/checkout@{sha()} # v4\n      - uses: actions/setup-python@{sha()}\n",
            f"commit {sha()}\nMerge: {sha()[:7]} {sha()[:7]}\nAuthor: Dev <dev@localhost>\n\n    Fix the parser\n",
            f"{sha()[:8]} (Ana 2026-11-02 10:12:01 +0100 {rng.randrange(500)}) return value\n",
            f"image: ghcr.io/org/app@sha256:{r(HEX, 64)}\nrun_id = '{uuid.UUID(int=rng.getrandbits(128))}'\n",
            f'{{"id": "{uuid.UUID(int=rng.getrandbits(128))}", "etag": "\\"{r(HEX, 32)}\\"", "md5": "{r(HEX, 32)}"}}\n',
            f'<script src="/app.js" integrity="sha384-{b64(48)}" crossorigin="anonymous"></script>\n',
            f"//# sourceMappingURL=data:application/json;base64,{b64(120)}\n",
            f"src: url(data:font/woff2;base64,{b64(90)}) format('woff2');\n",
            f'fixture = base64.b64decode("{b64(60)}")\nsnapshot_id = "{r(HEX, 64)}"\n',
        ]
    out += [
        "npm_config_cache=/tmp/npm\necho $npm_package_version $npm_lifecycle_event\n",
        "from huggingface_hub import hf_hub_download\npath = hf_hub_download(repo_id, filename)\n",
        "TASK_QUEUE = 'default'\nSKIP_SLOW = True\nDESK_ID = 4\nask_user_for_confirmation_before_deleting = False\n",
        "import sklearn\nfrom sk_learn_utils import fit  # sk-learn-helpers-for-integration-tests\n",
        "pip install pypi-simple-index-client\npython -m pip download --index-url https://pypi.org/simple pkg\n",
        "SG.set_defaults(color=True)\nsheets_api = service.spreadsheets()\n",
        "class SKU:\n    code: str\nSKU_PREFIX = 'SK'\nmodel_v1_config = {'dropout_rate': 0.1}\n",
        "def gsk_fit(x):\n    return x\nglc_settings = load()\nnotion_ntn_cache = {}\n",
        "const EAAA = 4; const grpcPort = 50051; // data:AA\ntime = '10:AA'\n",
        "kubectl -n kube-system get pods\nhelm upgrade --install app ./chart --set image.tag=1.4.2\n",
        "async def fetch(session):\n    async with session.get(url) as resp:\n        return await resp.json()\n",
        f"CACHE_VERSION = '{r(HEX, 12)}'\nlogger.info('job %s finished', job_id)\n",
    ]
    return out
