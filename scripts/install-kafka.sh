#!/usr/bin/env bash
# Assemble Apache Kafka (KRaft) from Maven Central jars into the git-ignored cache.
# Idempotent: does nothing when the jars are already there. Needs a JDK 17+ and Maven.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TRACKFLOW_CACHE:-$root/.cache}"
libs="$cache/kafka/libs"
if ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1; then exit 0; fi
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  "$root/scripts/apt-install.sh" default-jdk-headless maven
fi
mkdir -p "$cache/m2"
tmp="$cache/kafka/libs.tmp"; rm -rf "$tmp"
mvn -q -B -f "$root/deploy/local/kafka-pom.xml" -Dmaven.repo.local="$cache/m2" \
  dependency:copy-dependencies -DoutputDirectory="$tmp" -DincludeScope=runtime
rm -rf "$libs"; mv "$tmp" "$libs"
echo "kafka jars in $libs"
