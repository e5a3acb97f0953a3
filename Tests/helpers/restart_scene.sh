#!/bin/sh
# The restart scene, run inside a throwaway systemd container (the systemd test and `scripts/bench daemon`):
# weir's unit as shipped with a drop-in that points ExecStart at the bound binary, PODS pod namespaces selected by
# the config (weirt-rl-f0, weirt-rl-s1, weirt-rl-f2, …: `f` pods use the shared forwarder, `s` pods a sidecar),
# and a server namespace joined to weirt-rl-f0 by a veth (pod 198.18.0.1, server 198.18.0.2) with an echo server
# on 198.18.0.2:8080. Everything lives in the container and goes when it powers off.
#
# usage: restart_scene.sh PODS
set -eu
pods=$1
cp /opt/weir/unit/weir.service /etc/systemd/system/weir.service
mkdir -p /etc/systemd/system/weir.service.d
printf '[Service]\nExecStart=\nExecStart=/opt/weir/bin/weir daemon --config /etc/weir/weir.yaml\nEnvironment=WEIR_LOG_LEVEL=info\n' \
  > /etc/systemd/system/weir.service.d/scene.conf
systemd-tmpfiles --create /opt/weir/unit/weir.tmpfiles
cat > /etc/weir/weir.yaml <<EOF
select: ["weirt-rl-*"]
checkInterval: 60
selectors:
  - netns: ["weirt-rl-f*"]
    mode: forwarder
EOF
ip netns add weirts-srv
ip -n weirts-srv link set lo up
i=0
while [ "$i" -lt "$pods" ]; do
  if [ $((i % 2)) -eq 0 ]; then name=weirt-rl-f$i; else name=weirt-rl-s$i; fi
  ip netns add "$name"
  ip -n "$name" link set lo up
  i=$((i + 1))
done
ip link add rla netns weirt-rl-f0 type veth peer name rlb netns weirts-srv
ip -n weirt-rl-f0 addr add 198.18.0.1/24 dev rla
ip -n weirts-srv addr add 198.18.0.2/24 dev rlb
ip -n weirt-rl-f0 link set rla up
# Each relayed connection takes two ports of the pod's towards the server (the client's and the forwarder's
# upstream): a fast load runs out of them within a minute of TIME_WAIT unless they are many and reused.
ip netns exec weirt-rl-f0 sysctl -q -w net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
ip -n weirts-srv link set rlb up
setsid ip netns exec weirts-srv /usr/bin/python3 /opt/weir/helpers/echo_server.py 198.18.0.2 8080 \
  < /dev/null > /tmp/echo.log 2>&1 &
systemctl daemon-reload
# The echo server answers before the scene is called ready (bounded: 10 s).
n=0
until ip netns exec weirts-srv /usr/bin/python3 -c \
  'import socket; socket.create_connection(("198.18.0.2", 8080), timeout=1).close()' 2> /dev/null; do
  n=$((n + 1))
  [ "$n" -lt 100 ] || { echo "echo server did not start: $(cat /tmp/echo.log)"; exit 1; }
  sleep 0.1
done
