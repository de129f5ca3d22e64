# Shared by adapters/rocketmq/ci/broker and adapters/rocketmq/ci/cluster: which RocketMQ, where
# its jars go, which classes run it. Source it.

# MQKIT_ROCKETMQ_VERSION: another release (the cluster script sets its own, see there).
ROCKETMQ_VERSION=${MQKIT_ROCKETMQ_VERSION:-5.3.3}
# shellcheck disable=SC2034  # used by the scripts that source this file
ARTIFACTS=(
    "org.apache.rocketmq:rocketmq-namesrv:$ROCKETMQ_VERSION"  # depends on rocketmq-controller
    "org.apache.rocketmq:rocketmq-proxy:$ROCKETMQ_VERSION"  # depends on rocketmq-broker
)
# shellcheck disable=SC2034
NAMESRV_MAIN=org.apache.rocketmq.namesrv.NamesrvStartup
# shellcheck disable=SC2034
BROKER_MAIN=org.apache.rocketmq.broker.BrokerStartup
# shellcheck disable=SC2034
PROXY_MAIN=org.apache.rocketmq.proxy.ProxyStartup
# One directory per release, so that the broker and the cluster scripts never swap each other's.
CACHE=${MQKIT_ROCKETMQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mqkit}/rocketmq-$ROCKETMQ_VERSION
