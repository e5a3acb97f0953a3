#!/usr/bin/env bash
# make_certs.sh DIR: test PKI for the mTLS tests (openssl 3, non-interactive, EC P-256, PKCS#8 keys, 1 day).
#   ca.pem, ca-key.pem              the trust domain's CA
#   server.pem, server-key.pem      DNS:server.apps.svc.cluster.local, URI:spiffe://weir.test/server
#   client.pem, client-key.pem      URI:spiffe://weir.test/client, DNS:client.apps.svc.cluster.local
#   evil.pem, evil-key.pem          URI:spiffe://weir.test/evil (same CA: valid chain, wrong SAN)
#   other-ca.pem, other-ca-key.pem  an unrelated CA
#   stranger.pem, stranger-key.pem  URI:spiffe://weir.test/client signed by other-ca (right SAN, wrong CA)
# Every file is mode 0644 so an Envoy running as another uid (1337) can read the keys too.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
mkdir -p "$dir"
cd "$dir"

# quiet CMD...: runs CMD, showing its chatter (openssl's progress on stderr) only if it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then printf '%s\n' "$out" >&2; return 1; fi
}

# key FILE: a new P-256 private key, PKCS#8 PEM.
key() { quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# ca NAME: a self-signed CA certificate NAME.pem with key NAME-key.pem.
ca() {
    key "$1-key.pem"
    quiet openssl req -x509 -new -key "$1-key.pem" -out "$1.pem" -days 1 -subj "/O=weir test/CN=$1" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"
}

# leaf NAME CA SAN: NAME.pem (with NAME-key.pem) signed by CA.pem, subjectAltName SAN, usable as client and server.
leaf() {
    local name=$1 ca=$2 san=$3 ext
    key "$name-key.pem"
    ext=$name.ext
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$san" \
        "authorityKeyIdentifier=keyid" "subjectKeyIdentifier=hash" > "$ext"
    quiet openssl req -new -key "$name-key.pem" -subj "/O=weir test/CN=$name" -out "$name.csr"
    quiet openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca-key.pem" -set_serial "0x$(openssl rand -hex 16)" \
        -days 1 -extfile "$ext" -out "$name.pem"
    rm -f "$ext" "$name.csr"
}

ca ca
ca other-ca
leaf server ca "DNS:server.apps.svc.cluster.local,URI:spiffe://weir.test/server"
leaf client ca "URI:spiffe://weir.test/client,DNS:client.apps.svc.cluster.local"
leaf evil ca "URI:spiffe://weir.test/evil"
leaf stranger other-ca "URI:spiffe://weir.test/client"
chmod 0644 ./*.pem
