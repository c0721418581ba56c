"""SPIFFE ID parsing and the node-identity decision (pure; DESIGN "Node identity")."""

from __future__ import annotations

import pytest

from wasmxds.xds.identity import (
    IdentityPattern,
    IdentityPolicy,
    IdentityRefused,
    SpiffeId,
    claimed_namespaces,
    parse_identity_pattern,
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
        "spiffe://cluster.local/ns/team-a/sa/edge\n",
        "spiffe://cluster.local/ns/team-a\n/sa/edge",
        "spiffe://cluster.local\n/ns/team-a/sa/edge",
        "spiffe://cluster.local/NS/team-a/sa/edge",
        "spiffe://cluster.local/ns/team-a/SA/edge",
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
    identity = IdentityPolicy().verify("n", [TEAM_A], [])
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


def test_the_path_keeps_its_case():
    """SPIFFE-ID spec 2.4: the path is case-sensitive, so Team-A is not team-a."""
    refused = _refusal(IdentityPolicy(), ["spiffe://cluster.local/ns/Team-A/sa/edge"], ["team-a"])
    assert refused.reason == "namespace_mismatch"


def test_a_spiffe_id_beside_another_uri_san_proves_nothing():
    """X509-SVID: exactly one URI SAN; a SPIFFE ID next to an https:// one is refused."""
    refused = _refusal(IdentityPolicy(), [TEAM_A, "https://example.com/x"], ["team-a"])
    assert refused.reason == "multiple_uri_sans"
    assert "exactly one URI SAN" in str(refused)


def test_client_chosen_strings_are_cut_in_refusals():
    """A 1 MiB node id and claimed namespace make a refusal of a few hundred characters."""
    huge = "x" * (1 << 20)
    with pytest.raises(IdentityRefused) as refused:
        IdentityPolicy().verify(huge, [TEAM_A], [huge])
    message = str(refused.value)
    print(f"refusal for a 1 MiB node id and claim: {len(message)} characters")
    assert len(message) < 1000
    assert f"({1 << 20} characters)" in message
    assert len(refused.value.claimed) < 300
    with pytest.raises(IdentityRefused) as refused:
        IdentityPolicy().verify(huge, ["https://x/" + huge] * 5, [])
    assert len(str(refused.value)) < 2000


def test_debug_identity_patterns():
    """A full SPIFFE ID admits that account; ns/<ns>/* every account of the namespace."""
    one = parse_identity_pattern("spiffe://Cluster.Local/ns/ops/sa/admin")
    assert one == IdentityPattern("cluster.local", "ops", "admin")
    assert one.matches(SpiffeId("cluster.local", "ops", "admin"))
    assert not one.matches(SpiffeId("cluster.local", "ops", "envoy"))
    every = parse_identity_pattern("spiffe://cluster.local/ns/ops/*")
    assert str(every) == "spiffe://cluster.local/ns/ops/*"
    assert every.matches(SpiffeId("cluster.local", "ops", "envoy"))
    assert not every.matches(SpiffeId("other.domain", "ops", "envoy"))
    assert not every.matches(SpiffeId("cluster.local", "team-a", "ops"))
    for bad in ("spiffe://cluster.local/*", "spiffe://cluster.local/ns/*/sa/x", "ops"):
        with pytest.raises(ValueError, match="spiffe://"):
            parse_identity_pattern(bad)
