"""Every Kafka client built in shared/ and services/ gets the security arguments.

A constructor call of a Kafka client must spread the matching
`loopwise.kafka_security` function into its keywords (``**aiokafka_security(...)``,
``**kafka_python_security(...)``), and `faust.App` must be given
``broker_credentials=faust_credentials(...)``: a new client cannot forget TLS
and SASL, which a local plaintext broker would never show.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for top in ("shared", "services") for p in (ROOT / top).rglob("*.py"))
# Constructor name -> the function whose result it must spread into its keywords.
SPREAD = {
    "KafkaProducer": "kafka_python_security",
    "KafkaConsumer": "kafka_python_security",
    "KafkaAdminClient": "kafka_python_security",
    "AIOKafkaProducer": "aiokafka_security",
    "AIOKafkaConsumer": "aiokafka_security",
    "AIOKafkaAdminClient": "aiokafka_security",
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _calls(node: ast.AST, function: str) -> bool:
    return isinstance(node, ast.Call) and _name(node.func) == function


def problems(source: str, where: str) -> list[str]:
    """The Kafka client constructor calls in ``source`` that lack the security arguments."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in SPREAD:
            if not any(k.arg is None and _calls(k.value, SPREAD[name]) for k in node.keywords):
                found.append(f"{where}:{node.lineno}: {name}(...) without **{SPREAD[name]}(...)")
        elif name == "App" and isinstance(node.func, ast.Attribute) and _name(node.func.value) == "faust":
            if not any(k.arg == "broker_credentials" and _calls(k.value, "faust_credentials") for k in node.keywords):
                found.append(f"{where}:{node.lineno}: faust.App(...) without broker_credentials=faust_credentials(...)")
    return found


def test_the_walk_finds_the_clients():
    """The project builds clients of every family; the walk sees them (a rename would hide them)."""
    names = {_name(n.func) for p in SOURCES for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Call)}
    assert {"KafkaProducer", "KafkaAdminClient", "AIOKafkaProducer", "AIOKafkaConsumer", "App"} <= names


def test_every_kafka_client_gets_the_security_arguments():
    missing = [m for p in SOURCES for m in problems(p.read_text(), str(p.relative_to(ROOT)))]
    assert not missing, "Kafka clients without the TLS/SASL settings (loopwise.kafka_security):\n" + "\n".join(missing)


@pytest.mark.parametrize("source, ok", [
    ("AIOKafkaProducer(bootstrap_servers=b, **aiokafka_security(s))", True),
    ("aiokafka.AIOKafkaConsumer(bootstrap_servers=b)", False),
    ("KafkaProducer(**config)", False),
    ("KafkaProducer(**config, **aiokafka_security())", False),  # the other family's arguments
    ("KafkaAdminClient(bootstrap_servers=b, **kafka_python_security())", True),
    ("faust.App('id', broker=url)", False),
    ("faust.App('id', broker=url, broker_credentials=faust_credentials(s))", True),
])
def test_the_check_tells_a_missing_helper(source, ok):
    assert (problems(source, "x.py") == []) is ok


# Helpers that build a kafka-python client and read the environment when given no settings
# (for tools and tests): a service must give them its own.
GIVEN_SETTINGS = ("ensure_topics", "AckedProducer")


def test_services_give_their_settings_to_the_client_helpers():
    calls = [(p, n) for p in sorted((ROOT / "services").rglob("*.py")) for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Call) and _name(n.func) in GIVEN_SETTINGS]
    assert {_name(n.func) for _, n in calls} == set(GIVEN_SETTINGS)  # the walk sees them
    missing = [f"{p.relative_to(ROOT)}:{n.lineno}: {_name(n.func)}(...)" for p, n in calls
               if not any(k.arg == "settings" for k in n.keywords)]
    assert not missing, "calls that would read the TLS/SASL settings from the environment:\n" + "\n".join(missing)
