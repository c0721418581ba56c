"""SPIFFE ID parsing and the node-identity decision (pure; DESIGN "Node identity")."""

from __future__ import annotations

import pytest

from wasmxds.xds.identity import (
    IdentityPolicy,
    IdentityRefused,
    SpiffeId,
    claimed_namespaces,
    parse_spiffe_id,
)
from wasmxds.xds.node import node_info_from_metadata

TEAM_A = "spiffe://cluster.local/ns/team-a/sa/default"


def test_parses_an_istio_spiffe_id():
    """An Istio workload ID gives trust domain, namespace and account, and prints back."""
    identity = parse_spiffe_id(TEAM_A)
    assert identity == SpiffeId("cluster.local", "team-a", "default")
    assert str(identity) == TEAM_A


def test_scheme_and_trust_domain_are_case_insensitive():
    """SPIFFE compares scheme and trust domain without case; the path keeps its case."""
    assert parse_spiffe_id("SPIFFE://Cluster.Local/ns/team-a/sa/Web") == SpiffeId(
        "cluster.local", "team-a", "Web"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "https://cluster.local/ns/team-a/sa/default",
        "spiffe://cluster.local/ns/team-a",
        "spiffe://cluster.local/ns/team-a/sa/default/extra",
        "spiffe://cluster.local/sa/default/ns/team-a",
        "spiffe://cluster.local/ns//sa/default",
        "spiffe://cluster.local/ns/../sa/default",
        "spiffe://cluster.local:443/ns/team-a/sa/default",
        "spiffe://cluster.local/ns/team%2Da/sa/default",
        "spiffe://cluster.local/ns/team-a/sa/default?x=1",
        "spiffe:///ns/team-a/sa/default",
        "spiffe://bad domain/ns/team-a/sa/default",
    ],
)
def test_refuses_what_is_not_an_istio_spiffe_id(uri):
    """Anything but spiffe://<td>/ns/<ns>/sa/<sa> is refused with a sentence showing the shape."""
    with pytest.raises(ValueError, match="spiffe://") as refused:
        parse_spiffe_id(uri)
    assert repr(uri) in str(refused.value)


def test_claimed_namespaces_reads_both_keys_and_ignores_empty_ones():
    """NAMESPACE and namespace are both claims; empty or non-string values claim nothing."""
    assert claimed_namespaces({"NAMESPACE": "team-a", "namespace": "team-b"}) == [
        "team-a",
        "team-b",
    ]
    assert claimed_namespaces({"NAMESPACE": "", "namespace": 3, "LABELS": {}}) == []


def test_matching_claim_is_accepted():
    """A certificate proving team-a and metadata claiming team-a: the stream is team-a."""
    assert IdentityPolicy().verify("n", [TEAM_A], ["team-a"]).namespace == "team-a"


def test_no_claim_takes_the_certificates_namespace():
    """Metadata without a namespace gets the certificate's, not "default"."""
    identity = IdentityPolicy().verify("n", ["https://other.example/x", TEAM_A], [])
    node = node_info_from_metadata(
        "n", {"LABELS": {"app": "web"}}, proven_namespace=identity.namespace
    )
    assert (node.namespace, dict(node.labels)) == ("team-a", {"app": "web"})


def _refusal(policy: IdentityPolicy, uris: list[str], claimed: list[str]) -> IdentityRefused:
    with pytest.raises(IdentityRefused) as refused:
        policy.verify("edge-1", uris, claimed)
    assert "'edge-1'" in str(refused.value)
    return refused.value


def test_claiming_another_namespace_is_refused_naming_both():
    """team-a's certificate claiming team-b: refused, naming node, identity and claim."""
    refused = _refusal(IdentityPolicy(), [TEAM_A], ["team-b"])
    assert refused.reason == "namespace_mismatch"
    assert (refused.identity, refused.claimed) == (TEAM_A, "team-b")
    assert "claims namespace 'team-b'" in str(refused)
    assert TEAM_A in str(refused)


def test_a_second_metadata_key_cannot_smuggle_another_namespace():
    """NAMESPACE matching but namespace naming another: refused all the same."""
    refused = _refusal(IdentityPolicy(), [TEAM_A], ["team-a", "team-b"])
    assert (refused.reason, refused.claimed) == ("namespace_mismatch", "team-b")


def test_certificate_without_spiffe_id_is_refused():
    """No SPIFFE URI SAN: refused, and the sentence says what to do."""
    refused = _refusal(IdentityPolicy(), ["https://example.com/x"], ["team-a"])
    assert refused.reason == "no_spiffe_id"
    assert "--node-identity metadata" in str(refused)


def test_two_spiffe_ids_prove_nothing():
    """A certificate with two SPIFFE IDs is refused (SPIFFE allows exactly one)."""
    other = "spiffe://cluster.local/ns/team-b/sa/default"
    assert _refusal(IdentityPolicy(), [TEAM_A, other], []).reason == "multiple_spiffe_ids"


def test_malformed_spiffe_id_is_refused():
    """A SPIFFE URI that names no namespace is refused with the parser's sentence."""
    refused = _refusal(IdentityPolicy(), ["spiffe://cluster.local/workload/x"], [])
    assert refused.reason == "invalid_spiffe_id"
    assert "does not name a namespace" in str(refused)


def test_trust_domains_restrict_accepted_certificates():
    """With --trust-domain, IDs from other trust domains are refused; listed ones pass."""
    policy = IdentityPolicy(frozenset({"prod.example", "cluster.local"}))
    assert policy.verify("n", [TEAM_A], []).trust_domain == "cluster.local"
    refused = _refusal(IdentityPolicy(frozenset({"prod.example"})), [TEAM_A], ["team-a"])
    assert refused.reason == "untrusted_domain"
    assert "'cluster.local'" in str(refused)
    assert "prod.example" in str(refused)
