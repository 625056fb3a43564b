#!/usr/bin/env bash
# Fetch Apicurio Registry (a Confluent-compatible schema registry, API at /apis/ccompat/v7) from
# Maven Central into the git-ignored cache: the app's own "all" distribution artifact
# (io.apicurio:apicurio-registry-app:<version>:tar.gz:all, a Quarkus legacy-jar layout:
# apicurio-registry-app-<version>-runner.jar + lib/), unpacked to $cache/registry/<version>.
# Idempotent: does nothing when the runner jar is already there. Needs a JDK 17+ and Maven.
#
# 3.0.x is the newest line that runs on Java 17: 3.1+ jars are built for Java 21 (class file 65).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TRACKFLOW_CACHE:-$root/.cache}"
version="${TRACKFLOW_REGISTRY_VERSION:-3.0.9}"
dest="$cache/registry/$version"
runner="$dest/apicurio-registry-app-$version-runner.jar"
if [ -f "$runner" ]; then exit 0; fi
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  "$root/scripts/apt-install.sh" default-jdk-headless maven
fi
mkdir -p "$cache/m2" "$cache/registry"
# dependency:get (plugin 2.8, which skips the descriptor) without transitive resolution: the parent POM
# io.apicurio:apicurio-registry:3.0.9 is not served, so whatever reads the descriptor fails (3.x get, copy).
mvn -q -B -Dmaven.repo.local="$cache/m2" \
  org.apache.maven.plugins:maven-dependency-plugin:2.8:get \
  -Dartifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all" -Dtransitive=false
dist="$cache/m2/io/apicurio/apicurio-registry-app/$version/apicurio-registry-app-$version-all.tar.gz"
tmp="$dest.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
tar -xzf "$dist" -C "$tmp"
test -f "$tmp/apicurio-registry-app-$version-runner.jar"
rm -rf "$dest"; mv "$tmp" "$dest"
echo "apicurio registry $version in $dest"
