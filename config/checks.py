"""Single-value checks, each in the form the value's consumer accepts (AWS, Docker, the stores).

Every function takes the value as written and returns it (or its canonical form), or raises
`ValueError` with one sentence that says what is wrong and what to write instead.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from decimal import Decimal

import idna

from components.canonical import parse_go_duration

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
# A decimal such as 1.5Gi is accepted (Kubernetes writes sizes so) when it is a whole number of bytes.
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)$")
_UNIT = {"Ki": KiB, "Mi": MiB, "Gi": GiB, "Ti": TiB}


def show_size(size: int) -> str:
    for name, unit in (("Ti", TiB), ("Gi", GiB), ("Mi", MiB)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size // KiB}Ki" if size % KiB == 0 else f"{size} bytes"


def parse_size(value: object) -> int:
    if value is None:
        raise ValueError("is empty (null); give a size such as 512Mi or 2Gi")
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size: use a whole number with Ki, Mi or Gi (512Mi, 2Gi), as a string")
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size: use a whole number with Ki, Mi or Gi (512Mi, 2Gi)")
    size = Decimal(match.group(1)) * _UNIT[match.group(2)]
    if size != size.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes; write it in a smaller unit (1536Mi, not 1.5Gi)")
    return int(size)


def size_in(value: object, *, unit: int, minimum: int, maximum: int | None, consumer: str) -> int:
    """A size that `consumer` receives in whole `unit`s: it must not round down, nor fall outside its range."""
    size = parse_size(value)
    unit_name = show_size(unit)[1:] + "B"
    if size % unit:
        rounded = show_size(size // unit * unit) if size >= unit else "0"
        raise ValueError(f"{value} is not a whole number of {unit_name}: {consumer} takes whole {unit_name}, "
                         f"so it would round down to {rounded}")
    if size < minimum:
        raise ValueError(f"{value} is below the minimum of {show_size(minimum)} that {consumer} accepts")
    if maximum is not None and size > maximum:
        raise ValueError(f"{value} is above the maximum of {show_size(maximum)} that {consumer} accepts")
    return size


_GO_MAX_NS = 2**63 - 1


def go_duration_ns(value: object) -> int:
    """A config value as Go's time.ParseDuration reads it (components/canonical.py parses it, as the
    Docker provider does for healthcheck durations), with messages for a config file."""
    if value is None:
        raise ValueError("is empty (null); give a duration such as 10s or 1m30s")
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: write it as a string such as 10s, 1m30s or 500ms")
    try:
        total = parse_go_duration(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration: use a number with ns, us, ms, s, m or h, alone or "
                         "combined (500ms, 10s, 1m30s, 1h)") from None
    if total > _GO_MAX_NS:
        raise ValueError(f"{value} is longer than the 292 years Docker can represent")
    return total


def docker_health_duration(value: object, *, zero: bool) -> str:
    """Docker refuses a healthcheck duration below 1ms and reads 0 as "use the default" (30s).

    moby daemon/container.go validateHealthCheck (containertypes.MinimumDuration); measured on
    dockerd 20.10: `--health-interval 500us` is refused, `1m30s` with `--health-start-period 0s` is not.
    """
    ns = go_duration_ns(value)
    if ns == 0 and not zero:
        raise ValueError(f"{value} is zero, which Docker replaces with its default of 30s; give the duration you mean")
    if 0 < ns < 10**6:
        raise ValueError(f"{value} is below the 1ms minimum that Docker accepts")
    return str(value)


def admin_cidr(value: str) -> str:
    """An IPv4 CIDR as an EC2 security group rule's `cidr_blocks` takes it, never the whole internet."""
    if "/" not in value:
        try:
            bare = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR (write a network such as 203.0.113.0/28)") from None
        bits = 32 if bare.version == 4 else 128
        raise ValueError(f"{value} is an address, not a CIDR: write {value}/{bits}")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR: {exc}") from None
    if net.version == 6:
        raise ValueError(f"{value} is IPv6; the SSH rule takes IPv4 CIDRs only (an IPv6 admin network needs an "
                         "ipv6_cidr_blocks rule, which this program does not create)")
    address = value.split("/", 1)[0]
    if ipaddress.ip_address(address) != net.network_address:
        raise ValueError(f"{value} has host bits set, which AWS refuses: write the network {net} "
                         f"(or {address}/32 for that one address)")
    if str(net) != value:
        raise ValueError(f"{value!r} is not in CIDR notation; write {net}")
    if net.prefixlen == 0:
        raise ValueError(f"{value} opens SSH to the whole internet; list the admin networks instead")
    if net.prefixlen < 8:
        raise ValueError(f"{value} opens SSH to {net.num_addresses:,} addresses; list the admin networks instead")
    return value


def s3_bucket(value: str) -> str:
    """S3's naming rules for general purpose buckets (AmazonS3/latest/userguide/bucketnamingrules.html)."""
    if value.startswith(("arn:", "s3://")):
        raise ValueError(f"{value!r} is not a bucket name: give the bare name, not an ARN or s3:// URL")
    if not 3 <= len(value) <= 63:
        raise ValueError(f"{value!r} is {len(value)} characters; S3 bucket names have 3 to 63")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", value):
        raise ValueError(f"{value!r} is not an S3 bucket name: only lowercase letters, digits, dots and hyphens, "
                         "beginning and ending with a letter or digit")
    if ".." in value:
        raise ValueError(f"{value!r} has two adjacent dots, which S3 refuses in bucket names")
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value):
        raise ValueError(f"{value!r} is formatted as an IP address, which S3 refuses as a bucket name")
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if value.startswith(prefix):
            raise ValueError(f"{value!r} starts with {prefix!r}, which S3 reserves")
    for suffix in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if value.endswith(suffix):
            raise ValueError(f"{value!r} ends with {suffix!r}, which S3 reserves")
    return value


_LDH_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def domain(value: str) -> str:
    """A public host name; an internationalized one is accepted and returned as its ASCII (A-label) form,
    the form TLS certificates, nginx `server_name` and browsers' Origin headers use."""
    if value != value.strip() or not value:
        raise ValueError(f"{value!r} has surrounding spaces or is empty")
    if "://" in value or "/" in value or ":" in value:
        raise ValueError(f"{value!r} is not a domain name: give the host name only (chat.example.com), no scheme, port or path")
    if value.endswith("."):
        raise ValueError(f"{value!r} ends with a dot; write it without (certificates and URLs do not use the root label)")
    if len(value) > 253:
        raise ValueError(f"{value!r} is {len(value)} characters; a domain name has at most 253")
    try:
        ascii_name = idna.encode(value, uts46=True, std3_rules=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{value!r} is not a valid domain name: {exc}") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253:
        raise ValueError(f"{value!r} is {len(ascii_name)} characters in DNS form; the limit is 253")
    bad = [label for label in labels if not _LDH_LABEL.match(label)]
    if bad:
        raise ValueError(f"{value!r} is not a valid domain name: label {bad[0]!r} (letters, digits and inner hyphens, "
                         "at most 63 characters)")
    if len(labels) < 2 and ascii_name != "localhost":
        raise ValueError(f"{value!r} is a single label; give the full domain name (chat.example.com)")
    if labels[-1].isdigit() or re.fullmatch(r"[\d.]+", ascii_name):
        raise ValueError(f"{value!r} is not a domain name (an IP address or a numeric top-level label)")
    return ascii_name


def env_name(value: str) -> str:
    # POSIX names: letters, digits and underscores, not starting with a digit (lowercase is allowed:
    # http_proxy, no_proxy). Docker would take more, but no shell or Node convention reads it.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r} is not an environment variable name (letters, digits and _, not starting with a digit)")
    return value


# distribution/reference grammar (what `docker pull` parses).
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^(?:{_REGISTRY}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")


def image_repository(value: str) -> str:
    last = value.rsplit("/", 1)[-1]
    if "@" in value or ":" in last:
        raise ValueError("put the tag or digest in `tag`/`digest`, not in the repository")
    if "://" in value:
        raise ValueError(f"{value!r} is not an image repository: no scheme (ghcr.io/org/app)")
    if len(value) > 255:
        raise ValueError(f"{value!r} is longer than the 255 characters Docker accepts")
    if not _REPOSITORY.match(value):
        first, _, rest = value.partition("/")
        path = rest if rest and ("." in first or ":" in first or first == "localhost") else value
        hint = " (the path must be lowercase)" if path != path.lower() else ""
        raise ValueError(f"{value!r} is not a Docker image repository{hint}: [registry/]path with lowercase "
                         "letters, digits and . _ - separators")
    return value


MUTABLE_TAGS = frozenset({"", "latest", "stable", "main", "master"})

# Words of an environment variable's name (split at `_`) that say its value is a credential ...
SECRET_WORDS = frozenset({"PASSWORD", "PASSWD", "PWD", "PASS", "SECRET", "SECRETS", "TOKEN", "KEY", "APIKEY", "DSN",
                          "CREDENTIAL", "CREDENTIALS", "PRIVATE"})
# ... unless the name says the value points at the secret instead of holding it (POSTGRES_PASSWORD_FILE).
REFERENCE_SUFFIXES = ("_FILE", "_PATH")


def secret_looking(name: str) -> bool:
    """A variable whose value must come from a secret (the model and the policy pack agree on this)."""
    upper = name.upper()
    if upper.endswith(REFERENCE_SUFFIXES):
        return False
    return bool(set(re.split(r"[^A-Z0-9]+", upper)) & SECRET_WORDS)


def image_tag(value: str) -> str:
    if value.strip().lower() in MUTABLE_TAGS:
        raise ValueError(f"tag {value!r} is mutable; pin a release tag or a digest")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError(f"{value!r} is not a valid image tag (letters, digits, _ . -, not starting with . or -, "
                         "at most 128 characters)")
    return value


_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


def image_digest(value: str) -> str:
    algorithm, _, hex_part = value.partition(":")
    size = _DIGEST_HEX.get(algorithm)
    if size is None or not re.fullmatch(rf"[0-9a-f]{{{size}}}", hex_part):
        raise ValueError("digest must be sha256: followed by 64 lowercase hex digits (or sha512: and 128)")
    return value


def container_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"tmpfs paths must be absolute: {value}")
    parts = value.split("/")[1:]
    if value == "/" or any(p in {"", ".", ".."} for p in parts):
        raise ValueError(f"{value!r} is not a clean mount point below / (no trailing slash, //, . or ..)")
    if re.search(r"[\s:,]", value):
        raise ValueError(f"{value!r} contains whitespace, ':' or ',', which Docker's mount syntax does not allow")
    if parts[0] in {"proc", "sys"}:
        # Measured on dockerd 20.10: create succeeds, start fails (runc cannot make the mount point there).
        # /dev is a tmpfs in the container, so /dev/shm and the like work.
        raise ValueError(f"{value!r} is under /{parts[0]}, where the container cannot start with a mount")
    return value


def http_path(value: str) -> str:
    # Node's http.get refuses unescaped characters (spaces, ...); '#' would never reach the server.
    if not re.fullmatch(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*(\?[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*)?", value):
        raise ValueError(f"{value!r} is not an HTTP path: start with / and use URL characters only "
                         "(percent-encode others)")
    return value


def route_prefix(value: str) -> str:
    if not re.fullmatch(r"/[A-Za-z0-9/_.~-]*", value):
        raise ValueError(f"{value!r} is not a URL path prefix: start with / and use letters, digits and / _ . ~ -")
    # nginx normalizes a request's path (merges slashes, resolves . and ..) before matching a location,
    # so such a prefix could never match.
    segments = value.split("/")[1:-1] if value.endswith("/") else value.split("/")[1:]
    if "//" in value or any(s in {".", ".."} for s in segments):
        raise ValueError(f"{value!r} has an empty, . or .. segment; nginx matches normalized paths only")
    return value


def uid_gid(value: str) -> str:
    match = re.fullmatch(r"(\d+):(\d+)", value)
    if not match:
        raise ValueError(f"{value!r} is not uid:gid in numbers (1001:1001)")
    uid, gid = (int(g) for g in match.groups())
    if uid == 0 or gid == 0:
        raise ValueError(f"{value!r} runs as root; give a non-root uid:gid such as 1001:1001")
    if max(uid, gid) > 4294967294:
        raise ValueError(f"{value!r} is outside the range of Linux ids (1 to 4294967294)")
    return value


def linux_user(value: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        raise ValueError(f"{value!r} is not a Linux user name (lowercase letters, digits, _ and -, at most 32)")
    if value == "root":
        raise ValueError("root logins are disabled on the host (disable_root); use the image's admin user")
    return value


def docker_endpoint(value: str) -> str:
    if not re.fullmatch(r"unix:///\S+|npipe:////\S+|tcp://[A-Za-z0-9.\-\[\]:]+:\d+|ssh://(\S+@)?[A-Za-z0-9.\-\[\]:]+", value):
        raise ValueError(f"{value!r} is not a Docker endpoint: unix:///var/run/docker.sock, ssh://user@host or tcp://host:2376")
    return value


# ImportKeyPair "imports the public key from an RSA or ED25519 key pair" (EC2 API reference): no ECDSA,
# no DSA, no security-key types. The blob's own type field must agree with the prefix.
_SSH_KEY_TYPES = {"ssh-ed25519", "ssh-rsa"}


def ssh_public_key(value: str) -> str:
    if "PRIVATE KEY" in value:
        raise ValueError("is a private key; give the public key (the one line of the .pub file) and never share the private one")
    fields = value.strip().split()
    if len(fields) < 2 or "\n" in value.strip():
        raise ValueError("is not one OpenSSH public key line (type, base64 key, optional comment)")
    kind, body = fields[0], fields[1]
    if kind not in _SSH_KEY_TYPES:
        raise ValueError(f"EC2 does not import {kind!r} keys; use one of {', '.join(sorted(_SSH_KEY_TYPES))}")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {kind} key is not valid base64") from None
    fields_in_blob: list[bytes] = []
    rest = blob
    while rest:
        size = int.from_bytes(rest[:4], "big")
        if len(rest) < 4 + size:
            raise ValueError(f"the {kind} key is truncated or corrupt (copy the whole line of the .pub file)")
        fields_in_blob.append(rest[4:4 + size])
        rest = rest[4 + size:]
    if not fields_in_blob or fields_in_blob[0] != kind.encode():
        raise ValueError(f"the key data is not a {kind} key")
    if kind == "ssh-ed25519" and (len(fields_in_blob) != 2 or len(fields_in_blob[1]) != 32):
        raise ValueError("the ssh-ed25519 key is truncated or corrupt (copy the whole line of the .pub file)")
    return value


def aws_region(value: str) -> str:
    if not re.fullmatch(r"[a-z]{2,}(-[a-z]+)+-\d+", value):  # also eusc-de-east-1, us-gov-west-1
        raise ValueError(f"{value!r} is not an AWS region name (eu-west-1, us-east-1)")
    return value


def availability_zone(value: str) -> str:
    if re.fullmatch(r"[a-z]{2,5}\d-az\d+", value):
        raise ValueError(f"{value!r} is a zone ID; give the zone name (eu-west-1a)")
    if not re.fullmatch(r"[a-z]{2,}(-[a-z]+)+-\d+([a-z]|-[a-z0-9-]*[a-z0-9])", value):
        raise ValueError(f"{value!r} is not an availability zone name (the region and a letter: eu-west-1a)")
    return value


# Families, sizes including metal-48xl, hyphenated families such as u-6tb1 and c7i-flex.
_INSTANCE_TYPE = re.compile(
    r"^[a-z][a-z0-9]*(-[a-z0-9]+)*\.(nano|micro|small|medium|large|xlarge|[1-9]\d*xlarge|metal|metal-[1-9]\d*xl)$")


def instance_type(value: str) -> str:
    if not _INSTANCE_TYPE.match(value):
        raise ValueError(f"{value!r} is not an EC2 instance type (family.size: t3.large, m6i.xlarge)")
    return value


def max_vcpus(instance: str) -> int | None:
    """An upper bound of the vCPUs of an instance type, from its size; None when the size does not say."""
    size = instance.split(".", 1)[1]
    if size in {"nano", "micro", "small", "medium", "large"}:
        return 2
    if size == "xlarge":
        return 4
    match = re.fullmatch(r"(\d+)xlarge", size)
    return 4 * int(match.group(1)) if match else None


def is_graviton(instance: str) -> bool | None:
    family = instance.split(".", 1)[0]
    if family.startswith("mac") or "-" in family:
        return None
    return family == "a1" or bool(re.fullmatch(r"[a-z]+\d+g[a-z]*", family))


def aws_owner(value: str) -> str:
    if not (re.fullmatch(r"\d{12}", value) or value in {"self", "amazon", "aws-marketplace"}):
        raise ValueError(f"{value!r} is not an AMI owner: a 12-digit account id (quoted), self, amazon or aws-marketplace")
    return value


def secret_id(value: str) -> str:
    if value.startswith("arn:"):
        raise ValueError(f"{value!r} is an ARN; give the secret's name (prod/my-saas-chat/app), the policy adds the ARN")
    if not re.fullmatch(r"[A-Za-z0-9/_+=.@-]{1,512}", value):
        raise ValueError(f"{value!r} is not a Secrets Manager secret name (letters, digits and / _ + = . @ -, at most 512)")
    return value


def ssm_ami_parameter(value: str) -> str:
    """A public SSM parameter path (GetParameter takes names starting with "/", at most 2048
    characters, segments of [a-zA-Z0-9_.-]); an AMI id or an ARN here is a mistake."""
    if not re.fullmatch(r"(/[A-Za-z0-9_.\-]+)+", value) or len(value) > 2048:
        raise ValueError(f"{value!r} is not an SSM parameter path like /aws/service/debian/release/bookworm/latest/amd64")
    return value


def registry_host(value: str) -> str:
    """A registry as it starts an image reference: a DNS name (with a dot) or localhost, optional :port."""
    if not re.fullmatch(r"(localhost|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+)(:[0-9]{1,5})?", value):
        raise ValueError(f"{value!r} is not a registry host like ghcr.io or registry.example.com:5000 (no scheme, no path)")
    return value


def email(value: str) -> str:
    # What an ACME server accepts as a mailto: contact: one address, no display name.
    if not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+", value):
        raise ValueError(f"{value!r} is not an e-mail address (ops@example.com)")
    return value


# prometheus/common model/time.go ParseDuration: units in this order, each at most once (1h30m, 30d; not 90m30m).
_PROM_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_PROM_UNITS_MS = (365 * 86400_000, 7 * 86400_000, 86400_000, 3600_000, 60_000, 1000, 1)


def prometheus_duration_ms(value: str) -> int:
    match = _PROM_DURATION.fullmatch(value)
    if not value or not match:
        raise ValueError(f"{value!r} is not a Prometheus duration: a number with y, w, d, h, m, s or ms, "
                         "largest unit first, each once (30s, 5m, 1h30m, 30d)")
    return sum(int(n) * unit for n, unit in zip(match.groups(), _PROM_UNITS_MS, strict=True) if n)


def prometheus_duration(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: write it as a string such as 30s, 5m or 30d")
    if prometheus_duration_ms(value) == 0:
        raise ValueError(f"{value} is zero; give a duration greater than 0")
    return value
