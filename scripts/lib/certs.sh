# Shared by the start scripts of secured brokers; source it after defining `log` and `die`.
#
#   make_certs DIR
#       a throw-away test PKI in DIR, made once (a later call finds DIR/complete and does
#       nothing). Every certificate is valid for 10 days, RSA 2048, SHA-256:
#         ca.pem ca.key              the CA every broker and client trusts
#         server.pem server.key      the broker's certificate (SAN localhost, 127.0.0.1)
#         server-chain.pem           server.pem followed by ca.pem
#         server.p12                 key, certificate and CA for Java brokers (password mqkit-test)
#         truststore.p12             ca.pem alone, as a Java trust store (password mqkit-test)
#         client.pem client.key      a client certificate (CN=mqkit-client), for mutual TLS
#         wronghost.pem wronghost.key signed by the CA, but for wrong-host.invalid only
#         other-ca.pem               a CA that signed nothing here (a client trusting it must fail)
#         expired.pem expired.key    signed by the CA, valid only in 2020 (SAN localhost, 127.0.0.1)
#       Nothing in DIR is secret beyond the test run: it never leaves loopback.

make_certs() {
    local dir=$1
    [ -f "$dir/complete" ] && return 0
    command -v openssl >/dev/null \
        || die "openssl is not installed: install it (apt-get install openssl) and run this again"
    mkdir -p "$dir"
    (
        set -e
        cd "$dir"
        rm -f ./*.pem ./*.key ./*.p12 ./*.csr ./*.srl ./*.ext
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 10 -subj "/CN=mqkit test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 10 -subj "/CN=other CA" \
            -keyout other-ca.key -out other-ca.pem 2>/dev/null
        rm -f other-ca.key
        _leaf() {  # name, CN, subjectAltName, extendedKeyUsage, extra x509 args…
            local name=$1 cn=$2 san=$3 usage=$4
            shift 4
            printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' \
                "$san" "$usage" >"$name.ext"
            openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$cn" \
                -keyout "$name.key" -out "$name.csr" 2>/dev/null
            openssl x509 -req -sha256 -in "$name.csr" -CA ca.pem -CAkey ca.key \
                -CAcreateserial -extfile "$name.ext" -out "$name.pem" "$@" 2>/dev/null
            rm -f "$name.csr" "$name.ext"
        }
        _leaf server localhost "DNS:localhost,IP:127.0.0.1" serverAuth,clientAuth -days 10
        _leaf client mqkit-client "DNS:mqkit-client" clientAuth -days 10
        _leaf wronghost wrong-host.invalid "DNS:wrong-host.invalid" serverAuth -days 10
        # An expired certificate: `openssl x509` cannot backdate, `openssl ca` can.
        openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout expired.key -out expired.csr 2>/dev/null
        : >index.txt
        echo 1000 >expired.srl
        cat >expired.cnf <<'CNF'
[ ca ]
default_ca = test
[ test ]
database = index.txt
new_certs_dir = .
serial = expired.srl
default_md = sha256
policy = anything
[ anything ]
commonName = supplied
[ ext ]
subjectAltName = DNS:localhost,IP:127.0.0.1
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
CNF
        openssl ca -batch -notext -config expired.cnf -extensions ext -cert ca.pem \
            -keyfile ca.key -in expired.csr -out expired.pem \
            -startdate 20200101000000Z -enddate 20200102000000Z >/dev/null 2>&1
        rm -f expired.csr expired.cnf index.txt* expired.srl* 1000.pem
        cat server.pem ca.pem >server-chain.pem
        openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem \
            -name broker -passout pass:mqkit-test -out server.p12 2>/dev/null
        rm -f ./*.srl
        chmod 600 ./*.key
    ) || die "openssl could not make the test certificates in $dir"
    # A Java trust store holding the CA (keytool marks it trusted; openssl pkcs12 cannot).
    local keytool=keytool
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/keytool" ]; then
        keytool=$JAVA_HOME/bin/keytool
    elif command -v java >/dev/null; then
        keytool="$(dirname "$(readlink -f "$(command -v java)")")/keytool"
    fi
    if [ -x "$keytool" ] || command -v "$keytool" >/dev/null; then
        rm -f "$dir/truststore.p12"
        "$keytool" -importcert -noprompt -alias ca -file "$dir/ca.pem" \
            -keystore "$dir/truststore.p12" -storetype PKCS12 -storepass mqkit-test >/dev/null 2>&1 \
            || die "keytool could not make the trust store in $dir"
    fi
    touch "$dir/complete"
}
