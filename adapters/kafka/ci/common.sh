# Shared by adapters/kafka/ci/broker and adapters/kafka/ci/cluster: which Kafka, where its jars
# go, how to run it. Source it (after defining `die`).

KAFKA_VERSION=4.1.1
# Kafka 4 logs through log4j 2 behind SLF4J 1.7; the release ships this binding, the POM does not.
LOG4J_VERSION=2.24.3
# shellcheck disable=SC2034  # used by the scripts that source this file
ARTIFACTS=(
    "org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
    "org.apache.logging.log4j:log4j-slf4j-impl:$LOG4J_VERSION"
)
# shellcheck disable=SC2034
MAIN_CLASS=kafka.Kafka
# shellcheck disable=SC2034
STORAGE_TOOL=kafka.tools.StorageTool  # what bin/kafka-storage.sh runs
CACHE=${MQKIT_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mqkit/kafka-$KAFKA_VERSION}

cluster_id() {  # a KRaft cluster id: 16 random bytes, URL-safe base64 without padding
    # Never one that starts with '-' (as Kafka's own Uuid.randomUuid): the storage tool would
    # read it as an option and stop with "--cluster-id/-t: expected one argument".
    python3 -c 'import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(i)'
}
