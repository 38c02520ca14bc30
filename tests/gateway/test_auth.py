"""JWT authentication: modes, HS256 and JWKS (RS256/ES256) verification, upload tokens, `kitrelay token`, and every
API route refusing an unauthenticated caller with a JSON 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from kitrelay.gateway.app import create_app
from kitrelay.gateway.auth import (
    UPLOAD_TOKEN_HEADER,
    Authenticator,
    mint_upload_token,
    resolve_auth_mode,
    upload_token_key,
)
from kitrelay.gateway.client import user_input
from kitrelay.gateway.errors import ApiError
from kitrelay.gateway.keys import AuthConfigError
from kitrelay.gateway.tokens import DevTokenError, mint_dev_token, mint_token
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings
from tests.gateway.conftest import (
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    MakeSettings,
    bearer,
    in_process_gateway,
    new_user,
    token_for,
)
from tests.gateway.fakes import JsonServer, json_server


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def hs_authenticator(**values: Any) -> Authenticator:
    return Authenticator.from_settings(
        settings(AUTH_MODE="jwt", JWT_SECRET=JWT_SECRET, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE, **values)
    )


async def refused(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(ApiError) as caught:
        await authenticator.verify(token)
    assert caught.value.status_code == 401
    assert caught.value.code == "unauthorized"
    assert caught.value.headers is not None and caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert not token or token not in caught.value.message
    return caught.value.message


def hand_signed_hs256(payload: dict[str, Any], key: bytes, **header: Any) -> str:
    """An HS256 JWT built by hand: PyJWT itself refuses to use a PEM public key as an HMAC secret."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', **header})}.{part(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def claims(**overrides: Any) -> dict[str, Any]:
    # Parametrised cases are built when the suite is collected, minutes before they run: valid for a day.
    now = int(time.time())
    values: dict[str, Any] = {"sub": "alice", "team": "acme", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 86_400}
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


# -- modes ----------------------------------------------------------------------------------------------------------


def test_without_a_key_a_loopback_gateway_is_dev_and_any_other_refuses_to_start() -> None:
    assert resolve_auth_mode(settings(GATEWAY_HOST="127.0.0.1")) == "dev"
    assert resolve_auth_mode(settings(GATEWAY_HOST="localhost")) == "dev"
    assert resolve_auth_mode(settings(GATEWAY_HOST="::1")) == "dev"
    for host in ("0.0.0.0", "10.1.2.3", "gateway.internal"):
        with pytest.raises(AuthConfigError, match="JWT_SECRET"):
            resolve_auth_mode(settings(GATEWAY_HOST=host))
    # Asked for explicitly, dev mode runs anywhere (and logs a warning).
    assert resolve_auth_mode(settings(GATEWAY_HOST="0.0.0.0", AUTH_MODE="dev")) == "dev"


def test_a_configured_key_means_jwt_and_jwt_needs_a_key() -> None:
    assert resolve_auth_mode(settings(JWT_SECRET=JWT_SECRET)) == "jwt"
    assert resolve_auth_mode(settings(JWT_JWKS_URL="https://idp.example/jwks.json")) == "jwt"
    assert resolve_auth_mode(settings(DEV_TOKEN_SECRET=JWT_SECRET, GATEWAY_HOST="0.0.0.0")) == "jwt"
    with pytest.raises(AuthConfigError, match="needs a key"):
        resolve_auth_mode(settings(AUTH_MODE="jwt"))


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"JWT_SECRET": "short"}, "at least 32"),
        ({"JWT_SECRET": JWT_SECRET, "JWT_ALGORITHMS": ["RS256"]}, "cannot be used with a shared secret"),
        ({"JWT_SECRET": JWT_SECRET, "JWT_ALGORITHMS": ["none"]}, "cannot be used"),
        ({"JWT_JWKS_URL": "https://idp.example/jwks", "JWT_ALGORITHMS": ["HS256"]}, "cannot be used with a JWKS"),
        ({"JWT_JWKS_URL": "file:///etc/passwd"}, "not usable"),
        ({"JWT_JWKS_URL": "https://idp.example/jwks", "JWT_SECRET": JWT_SECRET}, "not both"),
        ({"JWT_SECRET": JWT_SECRET, "JWT_SECRET_FILE": "/x"}, "not both"),
        ({"JWT_SECRET_FILE": "/nonexistent/secret"}, "Cannot read"),
    ],
)
def test_unsafe_or_broken_settings_stop_the_gateway(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(AuthConfigError, match=fragment):
        Authenticator.from_settings(settings(AUTH_MODE="jwt", **values))


def test_create_app_refuses_an_unauthenticated_public_gateway() -> None:
    with pytest.raises(AuthConfigError):
        create_app(settings(GATEWAY_HOST="0.0.0.0"))


async def test_the_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text(JWT_SECRET + "\n")
    authenticator = Authenticator.from_settings(
        settings(JWT_SECRET_FILE=str(secret_file), JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    )
    assert authenticator.mode == "jwt"
    assert await authenticator.verify(token_for(Identity(user_id="alice", team_id="acme"))) == Identity(
        user_id="alice", team_id="acme"
    )


# -- HS256 ----------------------------------------------------------------------------------------------------------


async def test_a_good_token_names_its_user_and_team() -> None:
    authenticator = hs_authenticator()
    token = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    assert await authenticator.verify(token) == Identity(user_id="alice", team_id="acme")


async def test_the_team_claim_is_configurable() -> None:
    authenticator = hs_authenticator(JWT_TEAM_CLAIM="https://kitrelay.test/org")
    token = jwt.encode(claims(team=None, **{"https://kitrelay.test/org": "org-7"}), JWT_SECRET, algorithm="HS256")
    assert await authenticator.verify(token) == Identity(user_id="alice", team_id="org-7")


@pytest.mark.parametrize(
    ("token_claims", "key", "algorithm", "fragment"),
    [
        (claims(exp=int(time.time()) - 3600), JWT_SECRET, "HS256", "expired"),
        (claims(nbf=int(time.time()) + 3600), JWT_SECRET, "HS256", "not valid yet"),
        (claims(), "another-secret-that-is-long-enough-to-use-123", "HS256", "signature"),
        (claims(iss="https://evil.example/"), JWT_SECRET, "HS256", "issuer"),
        (claims(iss=None), JWT_SECRET, "HS256", "'iss'"),
        (claims(aud="someone-else"), JWT_SECRET, "HS256", "audience"),
        (claims(sub=None), JWT_SECRET, "HS256", "'sub'"),
        (claims(team=None), JWT_SECRET, "HS256", "'team'"),
        (claims(exp=None), JWT_SECRET, "HS256", "'exp'"),
        (claims(team=42), JWT_SECRET, "HS256", "non-empty string"),
        (claims(team=""), JWT_SECRET, "HS256", "non-empty string"),
        (claims(team="x" * 300), JWT_SECRET, "HS256", "at most 255"),
        (claims(sub=""), JWT_SECRET, "HS256", "'sub'"),
        (claims(), JWT_SECRET, "HS512", "algorithm"),
    ],
)
async def test_a_bad_token_is_401_saying_what_is_wrong(
    token_claims: dict[str, Any], key: str, algorithm: str, fragment: str
) -> None:
    token = jwt.encode(token_claims, key, algorithm=algorithm)
    assert fragment in await refused(hs_authenticator(), token)


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * 9000, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."])
async def test_garbage_and_unsigned_tokens_are_401(token: str) -> None:
    await refused(hs_authenticator(), token)


async def test_an_unsigned_alg_none_token_is_refused() -> None:
    token = jwt.encode(claims(), key="", algorithm="none")
    assert "algorithm" in await refused(hs_authenticator(), token)


# -- JWKS (RS256, ES256) --------------------------------------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
JWKS_PATH = "/.well-known/jwks.json"


def _jwks() -> dict[str, Any]:
    rsa_jwk = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True)
    return {
        "keys": [
            {**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
            {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"},
        ]
    }


@pytest.fixture(scope="module")
def idp() -> Iterator[JsonServer]:
    with json_server({("GET", JWKS_PATH): (200, _jwks())}) as server:
        yield server


def jwks_authenticator(url: str) -> Authenticator:
    return Authenticator.from_settings(
        settings(JWT_JWKS_URL=url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE, GATEWAY_HOST="0.0.0.0")
    )


async def test_rs256_and_es256_tokens_are_checked_with_the_published_keys(idp: JsonServer) -> None:
    authenticator = jwks_authenticator(idp.url + JWKS_PATH)
    rs = jwt.encode(claims(sub="rita"), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(sub="eve", team="globex"), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
    assert await authenticator.verify(rs) == Identity(user_id="rita", team_id="acme")
    assert await authenticator.verify(es) == Identity(user_id="eve", team_id="globex")
    # The key set is cached: many tokens, one fetch (per cache lifetime).
    for _ in range(5):
        await authenticator.verify(rs)
    assert len(idp.requests_to(JWKS_PATH)) <= 2


async def test_jwks_refuses_foreign_keys_unknown_kids_and_algorithm_confusion(idp: JsonServer) -> None:
    authenticator = jwks_authenticator(idp.url + JWKS_PATH)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    assert "signature" in await refused(authenticator, forged)

    unknown = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "made-up"})
    assert "key this server does not know" in await refused(authenticator, unknown)
    fetches = len(idp.requests_to(JWKS_PATH))
    for _ in range(5):
        await refused(authenticator, unknown)
    # An unknown kid refetches the key set at most once per cooldown: no amplification towards the IdP.
    assert len(idp.requests_to(JWKS_PATH)) <= fetches + 1

    # The classic confusion: an HS256 token whose HMAC key is the (public) RSA key.
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = hand_signed_hs256(claims(), public_pem, kid="rsa-1")
    assert "algorithm" in await refused(authenticator, confused)


async def test_an_unreachable_jwks_is_503_not_401() -> None:
    with json_server() as gone:
        url = gone.url + JWKS_PATH
    authenticator = jwks_authenticator(url)
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(ApiError) as caught:
        await authenticator.verify(token)
    assert (caught.value.status_code, caught.value.code) == (503, "auth_unavailable")


# -- upload tokens --------------------------------------------------------------------------------------------------


async def test_upload_tokens_are_for_one_attachment_and_never_pass_as_user_tokens() -> None:
    authenticator = hs_authenticator()
    alice = Identity(user_id="alice", team_id="acme")
    token = authenticator.mint_upload_token("atc_1", alice)

    assert authenticator.verify_upload_token(token, "atc_1") == alice
    for attachment_id in ("atc_2", ""):
        with pytest.raises(ApiError, match="another attachment"):
            authenticator.verify_upload_token(token, attachment_id)
    expired = mint_upload_token(upload_token_key(settings(JWT_SECRET=JWT_SECRET)), "atc_1", alice, ttl_s=-60)
    with pytest.raises(ApiError, match="expired"):
        authenticator.verify_upload_token(expired, "atc_1")
    # Signed with a key derived from the JWT secret, never the secret itself: no confusion either way.
    await refused(authenticator, token)
    with pytest.raises(ApiError, match="not valid"):
        authenticator.verify_upload_token(token_for(alice), "atc_1")


# -- kitrelay token -------------------------------------------------------------------------------------------------


async def test_dev_tokens_need_a_dev_secret_and_a_gateway_without_other_keys_accepts_them() -> None:
    with pytest.raises(DevTokenError, match="DEV_TOKEN_SECRET is not set"):
        mint_dev_token(settings(), user="alice", team="acme")
    with pytest.raises(DevTokenError, match="at least 32"):
        mint_dev_token(settings(DEV_TOKEN_SECRET="short"), user="alice", team="acme")

    local = settings(DEV_TOKEN_SECRET=JWT_SECRET, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    token = mint_dev_token(local, user="alice", team="acme", ttl_s=60)
    authenticator = Authenticator.from_settings(local)
    assert authenticator.mode == "jwt"
    assert await authenticator.verify(token) == Identity(user_id="alice", team_id="acme")
    # A deployment with its own key does not take dev-secret tokens.
    production = settings(
        DEV_TOKEN_SECRET=JWT_SECRET,
        JWT_SECRET="production-secret-" + "p" * 32,
        JWT_ISSUER=ISSUER,
        JWT_AUDIENCE=AUDIENCE,
    )
    await refused(Authenticator.from_settings(production), token)


def test_mint_token_refuses_nonsense() -> None:
    with pytest.raises(DevTokenError):
        mint_token(JWT_SECRET, "", "acme")
    with pytest.raises(DevTokenError):
        mint_token(JWT_SECRET, "alice", "acme", ttl_s=0)
    decoded = jwt.decode(mint_token(JWT_SECRET, "alice", "acme", 60), JWT_SECRET, algorithms=["HS256"])
    assert (decoded["sub"], decoded["team"], decoded["exp"] - decoded["iat"]) == ("alice", "acme", 60)


# -- over HTTP ------------------------------------------------------------------------------------------------------

# Probes, the API description and the sign-in routes (tests/gateway/test_web.py) answer anyone (Kubernetes has no
# token; signing in is how one gets a token); everything else needs one.
OPEN_PATHS = {
    "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/auth/config",
    "/auth/dev-token", "/auth/dev-link",
}  # fmt: skip


def _api_routes(settings: Settings) -> list[tuple[str, str]]:
    """Every operation of the app's OpenAPI document (so a route added later is checked too), path parameters
    filled in with their own names."""
    document = create_app(settings).openapi()
    routes: list[tuple[str, str]] = []
    for path, operations in document["paths"].items():
        if path in OPEN_PATHS:
            continue
        concrete = path.replace("{", "").replace("}", "")
        routes.extend((method.upper(), concrete) for method in operations)
    return routes


async def test_every_api_route_answers_401_json_without_a_token(make_settings: MakeSettings) -> None:
    gateway_settings = make_settings()
    routes = _api_routes(gateway_settings)
    assert ("POST", "/chatkit") in routes and ("POST", "/api/chatkit/session") in routes
    async with in_process_gateway(gateway_settings) as gateway:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, {"Authorization": "Bearer nope"}):
                response = await gateway.http.request(method, path, headers=headers, content=b"{}")
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["content-type"].startswith("application/json")
                assert response.json()["error"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith('Bearer realm="kitrelay"')
        assert (await gateway.http.get("/healthz")).status_code == 200
        assert (await gateway.http.get("/openapi.json")).status_code == 200


async def test_a_good_token_gets_in_and_an_expired_one_is_told_so(make_settings: MakeSettings) -> None:
    alice = new_user(name="alice")
    async with in_process_gateway(make_settings()) as gateway:
        listed = await gateway.chatkit(alice, {"type": "threads.list", "params": {}})
        assert listed.status_code == 200, listed.text
        assert listed.json()["data"] == []
        expired = await gateway.http.post(
            "/chatkit", json={"type": "threads.list", "params": {}}, headers=bearer(alice, ttl_s=-3600)
        )
        assert expired.status_code == 401
        assert expired.json() == {"error": "unauthorized", "message": "The token has expired."}


async def test_dev_mode_needs_no_token(make_settings: MakeSettings) -> None:
    async with in_process_gateway(make_settings(AUTH_MODE="dev", JWT_SECRET=None)) as gateway:
        response = await gateway.http.post("/chatkit", json={"type": "threads.list", "params": {}})
        assert response.status_code == 200


async def test_the_upload_token_authenticates_the_upload_route_only(make_settings: MakeSettings) -> None:
    alice = new_user(name="alice")
    async with in_process_gateway(make_settings()) as gateway:
        created = await gateway.chatkit(
            alice, {"type": "attachments.create", "params": {"name": "a.md", "size": 15, "mime_type": "text/markdown"}}
        )
        assert created.status_code == 200, created.text
        descriptor = created.json()["upload_descriptor"]
        upload_token = descriptor["headers"][UPLOAD_TOKEN_HEADER]
        attachment_id = created.json()["id"]
        only_upload_token = {UPLOAD_TOKEN_HEADER: upload_token}

        # Not a credential anywhere else.
        for method, path in (("GET", f"/attachments/{attachment_id}"), ("POST", "/chatkit")):
            response = await gateway.http.request(method, path, headers=only_upload_token, json={})
            assert response.status_code == 401, (method, path)
        # Nor for another attachment.
        other = await gateway.http.post("/attachments/atc_other/upload", headers=only_upload_token, content=b"# x")
        assert other.status_code == 401

        uploaded = await gateway.http.post(
            descriptor["url"].removeprefix("http://gateway.test"),
            headers={**only_upload_token, "content-type": "text/markdown"},
            content=b"# Notes\n\nhello",
        )
        assert uploaded.status_code == 200, uploaded.text
        # The token was handed out, never stored.
        stored = await gateway.state["store"].load_attachment(attachment_id, _Ctx(alice))
        assert stored.upload_descriptor is None or not stored.upload_descriptor.headers


class _Ctx:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity


async def test_tokens_and_message_text_never_reach_the_logs_at_info(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    alice = new_user(name="alice")
    secret_text = "zebra-crossing-7731 my bank pin"
    headers = bearer(alice)
    caplog.set_level(logging.INFO)
    async with in_process_gateway(make_settings(TURN_START_TIMEOUT_S=0.5)) as gateway:
        # No workers run here: the turn ends with "no worker picked it up", after its text went through the gateway.
        created = await gateway.http.post(
            "/chatkit", json={"type": "threads.create", "params": {"input": user_input(secret_text)}}, headers=headers
        )
        assert created.status_code == 200
        await gateway.http.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=headers)
        await gateway.http.post("/chatkit", json={"type": "threads.list", "params": {}}, headers={"Authorization": "x"})
    token = headers["Authorization"].removeprefix("Bearer ")
    logged = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.INFO)
    assert "published for thread" in logged  # the log was captured (the gateway logs every turn it starts)
    assert secret_text not in logged
    assert token not in logged
    assert JWT_SECRET not in logged
