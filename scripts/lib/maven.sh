# Shared by the start scripts of the Java brokers (adapters/kafka/ci/broker,
# adapters/rocketmq/ci/broker); source it after defining `log` and `die`.
#
#   maven_resolve DIR GROUP:ARTIFACT:VERSION...
#       puts the runtime jars of the artifacts (and their dependencies) into DIR/lib, once:
#       a later call with the same artifacts finds DIR/lib complete and downloads nothing.
#       Maven keeps its own download cache (~/.m2, or -Dmaven.repo.local in MAVEN_ARGS).
#   java_cmd
#       prints the java to run ($JAVA_HOME/bin/java, else the one on PATH); dies if none.
#   port_free PORT
#       succeeds when nothing listens on 127.0.0.1:PORT and it can be bound.

maven_resolve() {
    local dir=$1; shift
    local want="$*" stamp=$dir/lib.complete
    if [ -f "$stamp" ] && [ -d "$dir/lib" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    command -v mvn >/dev/null \
        || die "Maven (mvn) is not installed: install it (apt-get install maven) and run this again"
    mkdir -p "$dir"
    local work
    work=$(mktemp -d "$dir/resolve.XXXXXX")
    {
        echo '<project xmlns="http://maven.apache.org/POM/4.0.0">'
        echo '  <modelVersion>4.0.0</modelVersion>'
        echo '  <groupId>mqkit.ci</groupId><artifactId>broker</artifactId><version>1</version>'
        echo '  <packaging>pom</packaging>'
        echo '  <dependencies>'
        local coordinate group artifact version
        for coordinate in "$@"; do
            IFS=: read -r group artifact version <<<"$coordinate"
            echo "    <dependency><groupId>$group</groupId><artifactId>$artifact</artifactId><version>$version</version></dependency>"
        done
        echo '  </dependencies>'
        echo '</project>'
    } > "$work/pom.xml"
    log "resolving $want from Maven Central into $dir (once per machine)"
    # shellcheck disable=SC2086  # MAVEN_ARGS holds several arguments on purpose
    if ! mvn -B -q -f "$work/pom.xml" ${MAVEN_ARGS:-} dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$work/lib" > "$work/mvn.log" 2>&1; then
        grep -E 'ERROR' "$work/mvn.log" | head -n 5 >&2 || true
        die "Maven could not resolve $want (no network to Maven Central? a mirror goes in ~/.m2/settings.xml); full log: $work/mvn.log"
    fi
    # Move into place whole, so a concurrent start never sees half a lib directory.
    rm -rf "$dir/lib.old"
    [ -d "$dir/lib" ] && mv "$dir/lib" "$dir/lib.old"
    mv "$work/lib" "$dir/lib"
    rm -rf "$dir/lib.old" "$work"
    echo "$want" > "$stamp"
}

java_cmd() {
    local java
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
        java=$JAVA_HOME/bin/java
    else
        java=$(command -v java) \
            || die "no java found: install a JDK 17 (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    fi
    local major
    major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = //p')
    [ "${major%%.*}" -ge 17 ] 2>/dev/null \
        || die "$java is Java ${major:-?}; the brokers need Java 17 or newer: set JAVA_HOME"
    echo "$java"
}

port_free() {
    python3 - "$1" <<'PYEOF'
import socket, sys
port = int(sys.argv[1])
try:
    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    sys.exit(1)  # something answers there
except OSError:
    pass
s = socket.socket()
try:
    s.bind(("127.0.0.1", port))
except OSError:
    sys.exit(1)
finally:
    s.close()
PYEOF
}
