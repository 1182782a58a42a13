"""Kafka security settings: validation, aiokafka keyword arguments, Faust credentials, secrecy of the password."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.errors import ConfigError
from streams.kafka_security import faust_broker_options, kafka_client_options
from streams.settings import ENV_DEFAULTS, SASL_MECHANISMS, Settings

PASSWORD = "pw-S3cret-MUST-NOT-LEAK"
SECURITY_VARS = ("STREAMS_SECURITY_PROTOCOL", "STREAMS_SASL_MECHANISM", "STREAMS_SASL_USERNAME",
                 "STREAMS_SASL_PASSWORD_FILE", "STREAMS_SASL_PASSWORD", "STREAMS_SSL_CAFILE",
                 "STREAMS_SSL_CERTFILE", "STREAMS_SSL_KEYFILE")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka-password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")  # secrets files usually end with a newline
    return path


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and its key (PEM): `cryptography` if installed, else openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl binary is available to make a test cert")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    cert, key = _self_signed(tmp_path)
    return {"STREAMS_SSL_CAFILE": str(cert), "STREAMS_SSL_CERTFILE": str(cert), "STREAMS_SSL_KEYFILE": str(key)}


def problems_of(env: dict[str, str]) -> tuple[list[str], str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.problems, str(info.value)


def construct_clients(options: dict[str, Any]) -> None:
    """aiokafka validates security arguments in its constructors; nothing connects here."""

    async def build() -> None:
        AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **options)
        AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options)
        AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **options)

    asyncio.run(build())


# --------------------------------------------------------------------------- settings


def test_every_security_variable_is_known_with_a_harmless_default() -> None:
    for name in SECURITY_VARS:
        assert name in ENV_DEFAULTS
    s = Settings.from_env({})
    assert s.security_protocol == "PLAINTEXT"
    assert s.sasl_mechanism is s.sasl_username is s.sasl_password is None
    assert s.ssl_cafile is s.ssl_certfile is s.ssl_keyfile is None
    assert Settings.from_env({name: ENV_DEFAULTS[name] for name in SECURITY_VARS}) == s


def test_plaintext_gives_plaintext_options_and_no_faust_credentials() -> None:
    s = Settings.from_env({})
    assert kafka_client_options(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_options(s) == {}
    construct_clients(kafka_client_options(s))


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_sasl_plaintext_options(mechanism: str, password_file: Path) -> None:
    s = Settings.from_env({"STREAMS_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMS_SASL_MECHANISM": mechanism,
                           "STREAMS_SASL_USERNAME": "svc", "STREAMS_SASL_PASSWORD_FILE": str(password_file)})
    assert s.sasl_password == PASSWORD, "read from the file, trailing newline dropped"
    options = kafka_client_options(s)
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                       "sasl_plain_username": "svc", "sasl_plain_password": PASSWORD}
    construct_clients(options)
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert credentials_to_aiokafka_auth(creds) == options | {"ssl_context": None}, "Faust connects the same way"
    assert PASSWORD not in repr(creds)


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_sasl_ssl_options_combine_credentials_with_a_tls_context(
        mechanism: str, password_file: Path, tls_files: dict[str, str]) -> None:
    s = Settings.from_env({"STREAMS_SECURITY_PROTOCOL": "SASL_SSL", "STREAMS_SASL_MECHANISM": mechanism.lower(),
                           "STREAMS_SASL_USERNAME": "svc", "STREAMS_SASL_PASSWORD_FILE": str(password_file),
                           "STREAMS_SSL_CAFILE": tls_files["STREAMS_SSL_CAFILE"]})
    assert s.sasl_mechanism == mechanism, "mechanism names are case-insensitive"
    options = kafka_client_options(s)
    context = options.pop("ssl_context")
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
                       "sasl_plain_username": "svc", "sasl_plain_password": PASSWORD}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "localhost"),),)]
    construct_clients(kafka_client_options(s))
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    auth = dict(credentials_to_aiokafka_auth(creds))
    assert isinstance(auth.pop("ssl_context"), ssl.SSLContext)
    assert auth == options, "Faust's consumer and producer get the same protocol, mechanism and credentials"


def test_ssl_with_ca_and_client_certificate(tls_files: dict[str, str]) -> None:
    s = Settings.from_env({"STREAMS_SECURITY_PROTOCOL": "ssl", **tls_files})
    assert s.security_protocol == "SSL"
    assert s.ssl_cafile == Path(tls_files["STREAMS_SSL_CAFILE"])
    assert s.ssl_certfile == Path(tls_files["STREAMS_SSL_CERTFILE"])
    assert s.ssl_keyfile == Path(tls_files["STREAMS_SSL_KEYFILE"])
    options = kafka_client_options(s)
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
    construct_clients(options)
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.SSLCredentials) and isinstance(creds.context, ssl.SSLContext)
    auth = dict(credentials_to_aiokafka_auth(creds))
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"] is creds.context


def test_ssl_without_files_uses_the_system_trust_store() -> None:
    options = kafka_client_options(Settings.from_env({"STREAMS_SECURITY_PROTOCOL": "SSL"}))
    assert options["security_protocol"] == "SSL" and isinstance(options["ssl_context"], ssl.SSLContext)


def test_a_key_that_does_not_match_the_certificate_fails_when_the_context_is_built(
        tmp_path: Path, tls_files: dict[str, str]) -> None:
    (tmp_path / "other").mkdir()
    _, other_key = _self_signed(tmp_path / "other")
    s = Settings.from_env({"STREAMS_SECURITY_PROTOCOL": "SSL", **tls_files, "STREAMS_SSL_KEYFILE": str(other_key)})
    with pytest.raises(ssl.SSLError):
        kafka_client_options(s)


def test_password_from_env_is_supported() -> None:
    s = Settings.from_env({"STREAMS_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMS_SASL_MECHANISM": "PLAIN",
                           "STREAMS_SASL_USERNAME": "svc", "STREAMS_SASL_PASSWORD": PASSWORD})
    assert kafka_client_options(s)["sasl_plain_password"] == PASSWORD
    assert PASSWORD not in repr(s)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("missing", ["STREAMS_SASL_MECHANISM", "STREAMS_SASL_USERNAME", "STREAMS_SASL_PASSWORD_FILE"])
def test_sasl_without_mechanism_username_or_password_names_the_variable(
        protocol: str, missing: str, password_file: Path) -> None:
    env = {"STREAMS_SECURITY_PROTOCOL": protocol, "STREAMS_SASL_MECHANISM": "SCRAM-SHA-256",
           "STREAMS_SASL_USERNAME": "svc", "STREAMS_SASL_PASSWORD_FILE": str(password_file)}
    del env[missing]
    problems, text = problems_of(env)
    assert len(problems) == 1 and problems[0].startswith(missing), problems
    assert "not set" in problems[0]
    assert PASSWORD not in text


def test_sasl_with_nothing_set_reports_all_three() -> None:
    problems, _ = problems_of({"STREAMS_SECURITY_PROTOCOL": "SASL_SSL"})
    assert [p.split()[0] for p in problems] == ["STREAMS_SASL_MECHANISM", "STREAMS_SASL_USERNAME",
                                                "STREAMS_SASL_PASSWORD_FILE"]


@pytest.mark.parametrize(("name", "value"), [
    ("STREAMS_SECURITY_PROTOCOL", "TLS"),
    ("STREAMS_SECURITY_PROTOCOL", "SASL"),
    ("STREAMS_SASL_MECHANISM", "GSSAPI"),
    ("STREAMS_SASL_MECHANISM", "OAUTHBEARER"),
    ("STREAMS_SASL_MECHANISM", "SCRAM-SHA-1"),
])
def test_unknown_protocol_or_mechanism_names_the_variable(name: str, value: str, password_file: Path) -> None:
    env = {"STREAMS_SECURITY_PROTOCOL": "SASL_SSL", "STREAMS_SASL_MECHANISM": "PLAIN",
           "STREAMS_SASL_USERNAME": "svc", "STREAMS_SASL_PASSWORD_FILE": str(password_file)} | {name: value}
    problems, text = problems_of(env)
    assert any(p.startswith(f"{name}=") for p in problems), problems
    assert PASSWORD not in text


@pytest.mark.parametrize("name", ["STREAMS_SASL_MECHANISM", "STREAMS_SASL_USERNAME", "STREAMS_SASL_PASSWORD",
                                  "STREAMS_SASL_PASSWORD_FILE"])
def test_sasl_settings_without_a_sasl_protocol_are_rejected(name: str) -> None:
    value = PASSWORD if name == "STREAMS_SASL_PASSWORD" else "x"
    if name == "STREAMS_SASL_MECHANISM":
        value = "PLAIN"
    problems, text = problems_of({name: value})
    assert len(problems) == 1 and problems[0].startswith(f"{name} is set"), problems
    assert PASSWORD not in text


@pytest.mark.parametrize("name", ["STREAMS_SSL_CAFILE", "STREAMS_SSL_CERTFILE"])
def test_tls_files_without_a_tls_protocol_or_missing_are_rejected(name: str, tmp_path: Path) -> None:
    problems, _ = problems_of({name: str(tmp_path / "ca.pem")})
    assert len(problems) == 1 and problems[0].startswith(f"{name} is set"), problems
    problems, _ = problems_of({"STREAMS_SECURITY_PROTOCOL": "SSL", name: str(tmp_path / "missing.pem")})
    assert len(problems) == 1 and problems[0].startswith(f"{name}="), problems


def test_a_key_without_its_certificate_is_rejected(tls_files: dict[str, str]) -> None:
    problems, _ = problems_of({"STREAMS_SECURITY_PROTOCOL": "SSL",
                               "STREAMS_SSL_KEYFILE": tls_files["STREAMS_SSL_KEYFILE"]})
    assert len(problems) == 1 and problems[0].startswith("STREAMS_SSL_KEYFILE"), problems


# --------------------------------------------------------------------------- the password stays secret


def test_password_file_content_is_never_in_repr_or_errors(password_file: Path) -> None:
    good = {"STREAMS_SECURITY_PROTOCOL": "SASL_SSL", "STREAMS_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAMS_SASL_USERNAME": "svc", "STREAMS_SASL_PASSWORD_FILE": str(password_file)}
    s = Settings.from_env(good)
    assert s.sasl_password == PASSWORD
    assert PASSWORD not in repr(s) and PASSWORD not in str(s)
    assert "sasl_password" not in repr(s)
    # Every other setting wrong at once: the error lists them all and never the password.
    bad = good | {"STREAMS_PARTITIONS": "x", "STREAMS_SASL_MECHANISM": "NOPE", "STREAMS_SSL_CAFILE": "/nonexistent"}
    problems, text = problems_of(bad)
    assert len(problems) == 3
    assert PASSWORD not in text and PASSWORD not in repr(problems)


def test_password_given_twice_is_an_error_that_does_not_echo_it(password_file: Path) -> None:
    problems, text = problems_of({"STREAMS_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMS_SASL_MECHANISM": "PLAIN",
                                  "STREAMS_SASL_USERNAME": "svc", "STREAMS_SASL_PASSWORD_FILE": str(password_file),
                                  "STREAMS_SASL_PASSWORD": PASSWORD})
    assert len(problems) == 1 and problems[0].startswith("STREAMS_SASL_PASSWORD_FILE and STREAMS_SASL_PASSWORD")
    assert "are both set" in problems[0]
    assert PASSWORD not in text


def test_unreadable_or_empty_password_file_names_the_variable(tmp_path: Path) -> None:
    base = {"STREAMS_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMS_SASL_MECHANISM": "PLAIN",
            "STREAMS_SASL_USERNAME": "svc"}
    problems, _ = problems_of(base | {"STREAMS_SASL_PASSWORD_FILE": str(tmp_path / "missing")})
    assert len(problems) == 1 and problems[0].startswith("STREAMS_SASL_PASSWORD_FILE=")
    assert "cannot be read" in problems[0]
    (tmp_path / "empty").write_text("\n")
    problems, _ = problems_of(base | {"STREAMS_SASL_PASSWORD_FILE": str(tmp_path / "empty")})
    assert len(problems) == 1 and problems[0].startswith("STREAMS_SASL_PASSWORD_FILE=") and "empty" in problems[0]
    # A binary file is not echoed either.
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + PASSWORD.encode())
    problems, text = problems_of(base | {"STREAMS_SASL_PASSWORD_FILE": str(tmp_path / "binary")})
    assert len(problems) == 1 and problems[0].startswith("STREAMS_SASL_PASSWORD_FILE=")
    assert PASSWORD not in text
