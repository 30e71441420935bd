"""Access: optional API keys, per-key visibility of jobs and sweeps, per-key limits, CORS, security headers,
and no stack trace in any response. In process, with the Engine test double (tests/api/conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re

import httpx
import pytest

from service.api.access import parse_api_keys
from service.api.security import API_CSP, SVG_CSP
from service.settings import Settings
from tests.api.conftest import assert_problem, small_request
from tests.support.keys import KEYS, KEYS_ON, TOKEN_A, TOKEN_B, TOKEN_C, A, B, C
from tests.support.real_runs import CORRELATIONS_EXACT, create_finished, run_document

pytestmark = pytest.mark.anyio

ORIGIN = "https://lab.example.org"

keys_on = pytest.mark.parametrize("settings_overrides", [KEYS_ON])


def sweep_body() -> dict:
    return {"base": small_request(), "grid": {"init.seed": [0, 1]}}


async def create(service, headers=None, path="/v1/simulations", body=None, **extra_headers) -> str:
    response = await service.client.post(path, json=body or small_request(), headers={**(headers or {}), **extra_headers})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def assert_unauthorized(response, challenge: str) -> None:
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == challenge
    assert body["errors"][0]["field"] == ["Authorization"]


# ------------------------------------------------------------------------------------------------
# keys off: open as before


async def test_without_keys_every_v1_route_is_open_and_jobs_have_no_owner(service):
    job = await create(service)
    listing = await service.client.get("/v1/simulations")
    assert listing.status_code == 200 and [item["id"] for item in listing.json()["items"]] == [job]
    assert "www-authenticate" not in listing.headers
    assert service.store.get(job).owner is None


async def test_openapi_declares_optional_bearer_security_and_the_401_on_every_v1_operation(service):
    schema = (await service.client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearerAuth": []}, {}], (path, method)
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (path, method)
            else:
                assert "security" not in operation and "401" not in operation["responses"], (path, method)


# ------------------------------------------------------------------------------------------------
# keys on: 401


@keys_on
async def test_missing_key_is_a_401_problem_with_a_bearer_challenge_and_creates_nothing(service):
    assert_unauthorized(await service.client.get("/v1/simulations"), 'Bearer realm="dlnsim"')
    assert_unauthorized(await service.client.post("/v1/simulations", json=small_request()), 'Bearer realm="dlnsim"')
    assert service.job_count() == 0 and service.engine.submitted == []


@keys_on
async def test_wrong_key_is_a_401_with_invalid_token(service):
    response = await service.client.get("/v1/simulations", headers={"Authorization": f"Bearer {TOKEN_A}x"})
    assert_unauthorized(response, 'Bearer realm="dlnsim", error="invalid_token"')
    # The hash of a key is not a key.
    response = await service.client.get("/v1/simulations", headers={
        "Authorization": f"Bearer {hashlib.sha256(TOKEN_B.encode()).hexdigest()}"})
    assert_unauthorized(response, 'Bearer realm="dlnsim", error="invalid_token"')


@keys_on
async def test_a_key_in_another_scheme_is_a_401(service):
    basic = base64.b64encode(f"alice:{TOKEN_A}".encode()).decode()
    response = await service.client.get("/v1/simulations", headers={"Authorization": f"Basic {basic}"})
    assert_unauthorized(response, 'Bearer realm="dlnsim"')


@keys_on
async def test_unknown_v1_routes_need_a_key_so_routes_cannot_be_enumerated(service):
    assert_unauthorized(await service.client.get("/v1/nothing-here"), 'Bearer realm="dlnsim"')


@keys_on
async def test_named_hashed_and_unnamed_keys_all_authenticate(service):
    for headers in (A, B, C):
        assert (await service.client.get("/v1/simulations", headers=headers)).status_code == 200


@keys_on
async def test_probes_docs_and_problem_pages_stay_open(service):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/problems/unauthorized"):
        assert (await service.client.get(path)).status_code == 200, path


@keys_on
async def test_an_unauthenticated_oversize_body_is_refused_before_it_is_read(service):
    response = await service.client.post("/v1/simulations", content=b"x" * (service.settings.max_body_bytes + 1))
    assert_unauthorized(response, 'Bearer realm="dlnsim"')


# ------------------------------------------------------------------------------------------------
# keys on: ownership


@keys_on
async def test_a_job_stores_its_key_id_never_the_token_nor_a_hash_of_it_alone(service):
    # Issue 19.10: an unnamed key's id was a plain SHA-256 prefix of its token, so whoever reads the store could test
    # guesses of a token offline. It is now keyed with the server's owner secret (kept in the data dir, 0600).
    named, unnamed = await create(service, A), await create(service, C)
    assert service.store.get(named).owner == "alice"
    secret_file = service.settings.data_dir / "owner-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    digest = hashlib.sha256(TOKEN_C.encode()).digest()
    keyed = "key:" + hmac.new(secret_file.read_bytes().strip(), digest, hashlib.sha256).hexdigest()[:16]
    assert service.store.get(unnamed).owner == keyed != "sha256:" + digest.hex()[:16]
    rows = service.store.db.connection().execute("SELECT * FROM jobs").fetchall()
    assert not any(TOKEN_A in str(v) or TOKEN_C in str(v) or digest.hex()[:16] in str(v) for row in rows for v in row)


def test_an_unnamed_keys_jobs_keep_their_owner_across_restarts_and_from_the_earlier_id_form(tmp_path):
    from service.main import create_app
    from tests.api.conftest import FakeEngine

    settings = Settings(data_dir=tmp_path, api_keys=KEYS)
    legacy = "sha256:" + hashlib.sha256(TOKEN_C.encode()).hexdigest()[:16]

    async def scenario() -> None:
        app = create_app(settings, engine_factory=FakeEngine)
        async with app.router.lifespan_context(app):
            old, _ = app.state.store.create(b"{}", "h", owner=legacy)  # stored by an earlier version
            new, _ = app.state.store.create(b"{}", "h", idempotency_key="k", owner=legacy)
        for _ in range(2):  # a restart renames the earlier ids, and keeps the new ones
            app = create_app(settings, engine_factory=FakeEngine)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    listed = (await client.get("/v1/simulations", headers=C)).json()["items"]
                    assert {s["id"] for s in listed} == {old.id, new.id}
                    assert (await client.get("/v1/simulations", headers=A)).json()["items"] == []
                    # its Idempotency-Key is still its own: found (another body: 422), not a new job
                    reused = await client.post("/v1/simulations", json=small_request(),
                                               headers={**C, "Idempotency-Key": "k"})
                    assert_problem(reused, 422, "idempotency-key-reused")

    asyncio.run(scenario())


@keys_on
async def test_another_keys_simulation_is_not_found_for_every_route(service):
    job = await create(service, A)
    client = service.client
    for response in (await client.get(f"/v1/simulations/{job}", headers=B),
                     await client.get(f"/v1/simulations/{job}/trajectory", headers=B),
                     await client.get(f"/v1/simulations/{job}/plot.svg", headers=B),
                     await client.post(f"/v1/simulations/{job}/cancel", headers=B),
                     await client.delete(f"/v1/simulations/{job}", headers=B)):
        body = assert_problem(response, 404, "not-found")
        assert "alice" not in body["detail"]
    assert (await client.get("/v1/simulations", headers=B)).json()["items"] == []
    # Untouched: still queued, never cancelled, still A's.
    assert service.engine.cancelled == []
    mine = await client.get(f"/v1/simulations/{job}", headers=A)
    assert mine.status_code == 200 and mine.json()["status"] == "queued"
    assert [item["id"] for item in (await client.get("/v1/simulations", headers=A)).json()["items"]] == [job]


@keys_on
async def test_another_keys_sweep_is_not_found_for_every_route(service):
    sweep = await create(service, A, path="/v1/sweeps", body=sweep_body())
    client = service.client
    for response in (await client.get(f"/v1/sweeps/{sweep}", headers=B),
                     await client.get(f"/v1/sweeps/{sweep}/results", headers=B),
                     await client.get(f"/v1/sweeps/{sweep}/points/0/trajectory", headers=B),
                     await client.post(f"/v1/sweeps/{sweep}/cancel", headers=B),
                     await client.delete(f"/v1/sweeps/{sweep}", headers=B)):
        assert_problem(response, 404, "not-found")
    assert (await client.get("/v1/sweeps", headers=B)).json()["items"] == []
    mine = await client.get(f"/v1/sweeps/{sweep}", headers=A)
    assert mine.status_code == 200 and mine.json()["status"] == "queued"
    assert service.app.state.sweep_store.get(sweep).owner == "alice"


@keys_on
async def test_jobs_created_while_keys_were_off_are_hidden_from_every_key(service):
    row, _ = service.store.create(b"{}", "h")  # what a keys-off server stored: no owner
    assert_problem(await service.client.get(f"/v1/simulations/{row.id}", headers=A), 404, "not-found")
    assert (await service.client.get("/v1/simulations", headers=A)).json()["items"] == []


@pytest.mark.parametrize("settings_overrides", [{"api_keys": f"alice:{TOKEN_A},alice:{TOKEN_C}"}])
async def test_two_tokens_under_one_name_are_one_owner_for_key_rotation(service):
    job = await create(service, A)
    assert (await service.client.get(f"/v1/simulations/{job}", headers=C)).status_code == 200


@keys_on
async def test_idempotency_keys_are_scoped_per_key(service):
    first = await create(service, A, **{"Idempotency-Key": "run-1"})
    # B's equal key with another body is B's own first use, not a conflict with A's.
    other = small_request(training={"method": "gd", "learning_rate": 0.01, "steps": 10})
    second = await create(service, B, body=other, **{"Idempotency-Key": "run-1"})
    assert second != first
    replay = await service.client.post("/v1/simulations", json=small_request(),
                                       headers={**A, "Idempotency-Key": "run-1"})
    assert replay.json()["id"] == first and replay.headers["idempotent-replayed"] == "true"
    assert_problem(await service.client.post("/v1/simulations", json=other, headers={**A, "Idempotency-Key": "run-1"}),
                   422, "idempotency-key-reused")


# ------------------------------------------------------------------------------------------------
# per-key limits


@keys_on
async def test_with_keys_and_no_per_key_setting_each_key_gets_a_fair_share_of_the_queue(service):
    # Issue 19.10: with keys on and no DLNSIM_MAX_ACTIVE_PER_KEY, one key's jobs filled the queue for all. Three
    # owners (alice, bob, the unnamed key) share DLNSIM_MAX_QUEUED = 6: two each.
    service.settings.max_queued = 6
    for _ in range(2):
        await create(service, A)
    refused = await service.client.post("/v1/simulations", json=small_request(), headers=A)
    problem = assert_problem(refused, 429, "too-many-active-jobs")
    assert "share of DLNSIM_MAX_QUEUED" in problem["detail"] and int(refused.headers["retry-after"]) >= 1
    for headers in (B, B, C, C):
        await create(service, headers)  # the others still have their share
    assert service.job_count() == 6


@pytest.mark.parametrize("settings_overrides", [{**KEYS_ON, "max_active_per_key": 2}])
async def test_a_key_at_its_active_limit_gets_429_with_retry_after_and_others_do_not(service):
    await create(service, A)
    await create(service, A, path="/v1/sweeps", body=sweep_body())  # sweeps count too
    for path, body in (("/v1/simulations", small_request()), ("/v1/sweeps", sweep_body())):
        response = await service.client.post(path, json=body, headers=A)
        assert_problem(response, 429, "too-many-active-jobs")
        assert int(response.headers["retry-after"]) >= 1
    await create(service, B)  # B has its own allowance
    assert service.job_count() == 2


@pytest.mark.parametrize("settings_overrides", [{**KEYS_ON, "max_active_per_key": 1}])
async def test_a_replay_is_answered_even_at_the_keys_active_limit(service):
    """A retried POST creates nothing, so the per-key limit does not refuse it (as for sweeps)."""
    first = await service.client.post("/v1/simulations", json=small_request(), headers={**A, "Idempotency-Key": "k"})
    assert first.status_code == 202
    replay = await service.client.post("/v1/simulations", json=small_request(), headers={**A, "Idempotency-Key": "k"})
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"] and service.job_count() == 1


@pytest.mark.parametrize("settings_overrides", [{**KEYS_ON, "max_active_per_key": 1}])
async def test_finishing_a_job_frees_its_keys_slot(service):
    job = await create(service, A)
    assert (await service.client.post("/v1/simulations", json=small_request(), headers=A)).status_code == 429
    assert (await service.client.post(f"/v1/simulations/{job}/cancel", headers=A)).json()["status"] == "cancelled"
    await create(service, A)


# ------------------------------------------------------------------------------------------------
# CORS


@pytest.mark.parametrize("settings_overrides", [{**KEYS_ON, "cors_origins": ORIGIN}])
async def test_preflight_from_an_allowed_origin_is_answered_without_a_key(service):
    response = await service.client.options("/v1/simulations", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "Authorization" in response.headers["access-control-allow-headers"]


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": ORIGIN}])
async def test_preflight_from_another_origin_is_a_400_problem_without_allow_origin(service):
    response = await service.client.options("/v1/simulations", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    body = assert_problem(response, 400, "cors-rejected")
    assert "origin" in body["detail"]
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("settings_overrides", [{**KEYS_ON, "cors_origins": ORIGIN}])
async def test_an_allowed_origin_can_read_responses_and_401s(service):
    created = await service.client.post("/v1/simulations", json=small_request(), headers={**A, "Origin": ORIGIN})
    assert created.headers["access-control-allow-origin"] == ORIGIN
    assert "Location" in created.headers["access-control-expose-headers"]
    refused = await service.client.get("/v1/simulations", headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


async def test_without_cors_origins_no_cors_headers_are_sent(service):
    response = await service.client.get("/v1/simulations", headers={"Origin": ORIGIN})
    assert not [name for name in response.headers if name.startswith("access-control-")]


# ------------------------------------------------------------------------------------------------
# security headers, no stack traces

BASE = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


@keys_on
async def test_security_headers_on_api_answers_errors_and_401s(service):
    job = await create(service, A)
    for response in (await service.client.get(f"/v1/simulations/{job}", headers=A),
                     await service.client.get("/v1/simulations/nope", headers=A),
                     await service.client.get("/v1/simulations")):
        assert {name: response.headers.get(name) for name in BASE} == BASE
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"] == API_CSP
    health = await service.client.get("/healthz")
    assert {name: health.headers.get(name) for name in BASE} == BASE and "cache-control" not in health.headers


async def test_docs_page_policy_allows_exactly_its_inline_script(service):
    response = await service.client.get("/docs")
    assert {name: response.headers.get(name) for name in BASE} == BASE
    csp = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert csp["script-src"].split() == ["'self'", f"'sha256-{digest}'"]
    assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert "http" not in response.headers["content-security-policy"]      # nothing from another origin


async def test_redoc_page_policy_allows_its_own_script_and_search_worker_only(service):
    response = await service.client.get("/redoc")
    assert response.status_code == 200
    csp = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["worker-src"] == "blob:" and csp["connect-src"] == "'self'"
    assert "http" not in response.headers["content-security-policy"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_script_and_stylesheet_from_this_service(service, page):
    html = (await service.client.get(page)).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert urls and all(u.startswith("/") for u in urls), urls      # no CDN, no other host: works offline
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        asset = await service.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url


async def test_docs_assets_are_the_installed_swagger_ui_and_redoc_bundles(service):
    js = await service.client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    assert b"SwaggerUIBundle" in js.content[:2000]
    redoc = await service.client.get("/docs/assets/redoc.standalone.js")
    assert b"Redoc" in redoc.content[:2000]
    css = await service.client.get("/docs/assets/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")


async def test_svg_plots_may_style_themselves_but_not_run_script(service):
    job = await create_finished(service, CORRELATIONS_EXACT, run_document(CORRELATIONS_EXACT))
    response = await service.client.get(f"/v1/simulations/{job}/plot.svg")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == SVG_CSP
    assert "script-src" not in SVG_CSP and "'none'" in SVG_CSP.split(";")[0]


async def test_an_exception_inside_a_route_is_a_bare_500_without_traceback(service, monkeypatch):
    def broken(job_id):
        raise RuntimeError("secret-internal-state at /srv/dlnsim/service/jobs/store.py line 42")

    monkeypatch.setattr(service.store, "get", broken)
    response = await service.client.get("/v1/simulations/any")
    body = assert_problem(response, 500, "internal")
    for leak in ("Traceback", "secret-internal-state", "RuntimeError", "store.py", 'File "'):
        assert leak not in response.text
    assert body["detail"] == "an unexpected error occurred; it has been logged"
    assert {name: response.headers.get(name) for name in BASE} == BASE


# ------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(("entry", "message"), [
    ("short", "at least 16"),
    ("sha256:abc", "64 hex"),
    ("bad name:" + TOKEN_A, "name before ':'"),
    (f"a:{TOKEN_A},b:{TOKEN_A}", "two names"),
])
def test_a_bad_key_setting_fails_at_start_without_echoing_the_secret(entry, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_api_keys(entry)
    assert TOKEN_A not in str(info.value) and "short" not in str(info.value).split(":", 1)[1]
