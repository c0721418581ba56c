// Command cosignfmt signs and verifies container image signatures in cosign's
// published format (specs/SIGNATURE_SPEC.md in sigstore/cosign), using only Go's
// standard library. It exists to test wasmxds against an implementation that
// shares no code with it: cosign itself cannot be built without the Go module
// proxy. It speaks the registry API v2 over plain HTTP, anonymously.
//
//	cosignfmt sign   --key PRIVATE.pem HOST:PORT/REPO:TAG
//	cosignfmt verify --key PUBLIC.pem  HOST:PORT/REPO:TAG
//
// Storage (spec "Tag-based Discovery" and "OCI Image Manifest V1"): the
// signatures of manifest sha256:HEX live in the same repository under the tag
// sha256-HEX.sig, an OCI image manifest with one layer per signature. Each
// layer is the Simple Signing payload (media type
// application/vnd.dev.cosign.simplesigning.v1+json) with the base64 signature
// in the annotation dev.cosignproject.cosign/signature. Signature schemes, as
// cosign verifies with --key: ECDSA (SHA-256, ASN.1 DER), RSA PKCS#1 v1.5
// (SHA-256), Ed25519.
package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
)

const (
	simpleSigningType   = "application/vnd.dev.cosign.simplesigning.v1+json"
	signatureAnnotation = "dev.cosignproject.cosign/signature"
	cosignType          = "cosign container image signature"
	ociManifest         = "application/vnd.oci.image.manifest.v1+json"
	ociConfig           = "application/vnd.oci.image.config.v1+json"
	acceptManifests     = "application/vnd.oci.image.manifest.v1+json, " +
		"application/vnd.oci.image.index.v1+json, " +
		"application/vnd.docker.distribution.manifest.v2+json, " +
		"application/vnd.docker.distribution.manifest.list.v2+json"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Size        int64             `json:"size"`
	Digest      string            `json:"digest"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

// The Simple Signing payload (containers/image docs/containers-signature.5.md).
type simpleSigning struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

type reference struct {
	host, repository, tag string
}

func parseReference(text string) (reference, error) {
	host, rest, ok := strings.Cut(text, "/")
	if !ok {
		return reference{}, fmt.Errorf("reference %q has no repository", text)
	}
	repository, tag := rest, "latest"
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		repository, tag = rest[:at], rest[at+1:]
	} else if colon := strings.LastIndex(rest, ":"); colon > strings.LastIndex(rest, "/") {
		repository, tag = rest[:colon], rest[colon+1:]
	}
	return reference{host, repository, tag}, nil
}

func (r reference) url(kind, name string) string {
	return fmt.Sprintf("http://%s/v2/%s/%s/%s", r.host, r.repository, kind, name)
}

func get(target, accept string) ([]byte, int, error) {
	request, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		return nil, 0, err
	}
	if accept != "" {
		request.Header.Set("Accept", accept)
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return nil, 0, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, 8<<20))
	return body, response.StatusCode, err
}

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// resolve returns the hex digest of the manifest the reference names now.
func resolve(ref reference) (string, error) {
	body, status, err := get(ref.url("manifests", ref.tag), acceptManifests)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", fmt.Errorf("GET manifest %s: HTTP %d", ref.tag, status)
	}
	return sha256Hex(body), nil
}

func uploadBlob(ref reference, data []byte) (string, error) {
	digest := "sha256:" + sha256Hex(data)
	response, err := http.Post(ref.url("blobs", "uploads/"), "application/octet-stream", nil)
	if err != nil {
		return "", err
	}
	response.Body.Close()
	if response.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("starting an upload: HTTP %d", response.StatusCode)
	}
	location, err := response.Location()
	if err != nil {
		return "", err
	}
	query := location.Query()
	query.Set("digest", digest)
	location.RawQuery = query.Encode()
	request, err := http.NewRequest(http.MethodPut, location.String(), bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	request.Header.Set("Content-Type", "application/octet-stream")
	put, err := http.DefaultClient.Do(request)
	if err != nil {
		return "", err
	}
	put.Body.Close()
	if put.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("uploading blob %s: HTTP %d", digest, put.StatusCode)
	}
	return digest, nil
}

func putManifest(ref reference, tag string, data []byte) error {
	request, err := http.NewRequest(http.MethodPut, ref.url("manifests", url.PathEscape(tag)), bytes.NewReader(data))
	if err != nil {
		return err
	}
	request.Header.Set("Content-Type", ociManifest)
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return err
	}
	response.Body.Close()
	if response.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT manifest %s: HTTP %d", tag, response.StatusCode)
	}
	return nil
}

func readPEM(path string) (*pem.Block, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	return block, nil
}

func loadPrivateKey(path string) (crypto.Signer, error) {
	block, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: unsupported PEM type %q", path, block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", path)
	}
	return signer, nil
}

func sign(signer crypto.Signer, payload []byte) ([]byte, error) {
	switch key := signer.(type) {
	case *ecdsa.PrivateKey:
		digest := sha256.Sum256(payload)
		return ecdsa.SignASN1(rand.Reader, key, digest[:])
	case *rsa.PrivateKey:
		digest := sha256.Sum256(payload)
		return rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	case ed25519.PrivateKey:
		return ed25519.Sign(key, payload), nil
	}
	return nil, fmt.Errorf("unsupported key type %T", signer)
}

func verifySignature(public any, payload, signature []byte) bool {
	switch key := public.(type) {
	case *ecdsa.PublicKey:
		digest := sha256.Sum256(payload)
		return ecdsa.VerifyASN1(key, digest[:], signature)
	case *rsa.PublicKey:
		digest := sha256.Sum256(payload)
		return rsa.VerifyPKCS1v15(key, crypto.SHA256, digest[:], signature) == nil
	case ed25519.PublicKey:
		return ed25519.Verify(key, payload, signature)
	}
	return false
}

// signatureImage returns the existing signature manifest for digest, or nil.
func signatureImage(ref reference, digest string) (*manifest, error) {
	body, status, err := get(ref.url("manifests", "sha256-"+digest+".sig"), acceptManifests)
	if err != nil {
		return nil, err
	}
	if status == http.StatusNotFound {
		return nil, nil
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET signature manifest: HTTP %d", status)
	}
	var found manifest
	if err := json.Unmarshal(body, &found); err != nil {
		return nil, fmt.Errorf("signature manifest: %w", err)
	}
	return &found, nil
}

func runSign(keyPath, refText string) error {
	ref, err := parseReference(refText)
	if err != nil {
		return err
	}
	signer, err := loadPrivateKey(keyPath)
	if err != nil {
		return err
	}
	digest, err := resolve(ref)
	if err != nil {
		return err
	}
	var payload simpleSigning
	payload.Critical.Identity.DockerReference = ref.host + "/" + ref.repository
	payload.Critical.Image.DockerManifestDigest = "sha256:" + digest
	payload.Critical.Type = cosignType
	payloadBytes, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	signature, err := sign(signer, payloadBytes)
	if err != nil {
		return err
	}
	payloadDigest, err := uploadBlob(ref, payloadBytes)
	if err != nil {
		return err
	}
	existing, err := signatureImage(ref, digest)
	if err != nil {
		return err
	}
	var layers []descriptor
	if existing != nil {
		layers = existing.Layers
	}
	layers = append(layers, descriptor{
		MediaType:   simpleSigningType,
		Size:        int64(len(payloadBytes)),
		Digest:      payloadDigest,
		Annotations: map[string]string{signatureAnnotation: base64.StdEncoding.EncodeToString(signature)},
	})
	diffIDs := make([]string, 0, len(layers))
	for _, layer := range layers {
		diffIDs = append(diffIDs, layer.Digest)
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "",
		"os":           "",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
		"config":       map[string]any{},
	})
	if err != nil {
		return err
	}
	configDigest, err := uploadBlob(ref, config)
	if err != nil {
		return err
	}
	image, err := json.Marshal(manifest{
		SchemaVersion: 2,
		MediaType:     ociManifest,
		Config:        descriptor{MediaType: ociConfig, Size: int64(len(config)), Digest: configDigest},
		Layers:        layers,
	})
	if err != nil {
		return err
	}
	if err := putManifest(ref, "sha256-"+digest+".sig", image); err != nil {
		return err
	}
	fmt.Printf("signed sha256:%s\n", digest)
	return nil
}

func runVerify(keyPath, refText string) error {
	ref, err := parseReference(refText)
	if err != nil {
		return err
	}
	block, err := readPEM(keyPath)
	if err != nil {
		return err
	}
	if block.Type != "PUBLIC KEY" {
		return fmt.Errorf("%s: want a PUBLIC KEY block, got %q", keyPath, block.Type)
	}
	public, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return err
	}
	digest, err := resolve(ref)
	if err != nil {
		return err
	}
	image, err := signatureImage(ref, digest)
	if err != nil {
		return err
	}
	if image == nil {
		return errors.New("no signatures found")
	}
	var problems []string
	for _, layer := range image.Layers {
		if layer.MediaType != simpleSigningType {
			continue
		}
		signature, err := base64.StdEncoding.DecodeString(layer.Annotations[signatureAnnotation])
		if err != nil {
			problems = append(problems, "bad signature annotation")
			continue
		}
		payloadBytes, status, err := get(ref.url("blobs", layer.Digest), "")
		if err != nil || status != http.StatusOK {
			problems = append(problems, fmt.Sprintf("payload %s: HTTP %d %v", layer.Digest, status, err))
			continue
		}
		if "sha256:"+sha256Hex(payloadBytes) != layer.Digest {
			problems = append(problems, "payload does not match its digest")
			continue
		}
		if !verifySignature(public, payloadBytes, signature) {
			problems = append(problems, "signature does not verify with the key")
			continue
		}
		var payload simpleSigning
		if err := json.Unmarshal(payloadBytes, &payload); err != nil {
			problems = append(problems, "payload: "+err.Error())
			continue
		}
		if payload.Critical.Type != cosignType {
			problems = append(problems, "payload type "+payload.Critical.Type)
			continue
		}
		if payload.Critical.Image.DockerManifestDigest != "sha256:"+digest {
			problems = append(problems, "invalid or missing digest in claim: "+payload.Critical.Image.DockerManifestDigest)
			continue
		}
		fmt.Printf("Verified OK sha256:%s\n", digest)
		return nil
	}
	return fmt.Errorf("no matching signatures: %s", strings.Join(problems, "; "))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cosignfmt sign|verify --key FILE REF")
		os.Exit(2)
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	key := flags.String("key", "", "PEM key file")
	_ = flags.Parse(os.Args[2:])
	if *key == "" || flags.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: cosignfmt sign|verify --key FILE REF")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "sign":
		err = runSign(*key, flags.Arg(0))
	case "verify":
		err = runVerify(*key, flags.Arg(0))
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
