"""Prometheus exposition: parsed back with prometheus-client's strict parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from l7proxy import metrics
from tests.l7proxy.test_statspage import cert, snapshot


def families() -> dict[str, list[tuple[dict[str, str], float]]]:
    text = metrics.render(snapshot((cert(45.5), cert(-2, 'CN=odd "quoted"\\name')))).decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def test_every_server_has_one_status_series_per_state_and_one_is_set() -> None:
    found = families()["haproxy_server_status"]
    by_server: dict[tuple[str, str], dict[str, float]] = {}
    for labels, value in found:
        by_server.setdefault((labels["proxy"], labels["server"]), {})[labels["state"]] = value
    assert set(by_server) == {
        ("www", "web1"),
        ("www", "web<2>"),
        ("www", "fallback"),
        ("api", "api1"),
    }
    for states in by_server.values():
        assert set(states) == set(metrics.SERVER_STATES)
        assert sum(states.values()) == 1
    assert by_server["www", "web1"]["DOWN"] == 1
    assert by_server["www", "web<2>"]["DRAIN"] == 1


def test_haproxy_names_for_frontends_backends_and_servers() -> None:
    found = families()
    assert ({"proxy": "www"}, 1.0) in found["haproxy_frontend_current_sessions"]
    assert ({"proxy": "www"}, 1.0) in found["haproxy_frontend_http_requests_total"]
    assert ({"proxy": "www"}, 300.0) in found["haproxy_frontend_bytes_in_total"]
    assert ({"proxy": "www"}, 204800.0) in found["haproxy_backend_bytes_in_total"]
    assert ({"proxy": "www", "state": "UP"}, 1.0) in found["haproxy_backend_status"]
    web1 = {"proxy": "www", "server": "web1"}
    assert (web1, 1.0) in found["haproxy_server_current_sessions"]
    assert ({**web1, "code": "2xx"}, 1.0) in found["haproxy_server_http_responses_total"]
    assert (web1, 0.0) in found["haproxy_server_check_failures_total"]
    assert (web1, 1.0) in found["haproxy_server_weight"]
    assert (web1, 1.0) in found["lbproxy_server_health_transitions_total"]
    assert (web1, 0.0) in found["lbproxy_server_redispatches_total"]


def test_certificate_expiry_in_seconds_negative_when_expired_and_labels_escaped() -> None:
    found = {
        labels["subject"]: value
        for labels, value in families()["lbproxy_certificate_expiry_seconds"]
    }
    assert found == {"CN=www.example.com": 45.5 * 86400, 'CN=odd "quoted"\\name': -2 * 86400}


def test_label_escaping() -> None:
    assert metrics.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
