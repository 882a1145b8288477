// Package testenv finds the external things integration tests need (a Node.js
// with the official Socket.IO client, Redis, MongoDB) or skips the test with
// the name of the variable that would run it. CI sets every variable, so
// nothing skips there; plain `go test ./...` needs none of them.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// E2EDirEnv names the test/e2e directory in which `npm ci` has installed the
// official socket.io-client.
const E2EDirEnv = "KLECTR_E2E_DIR"

// SocketIOClientDir returns the test/e2e directory from KLECTR_E2E_DIR, with
// its scripts and node_modules/socket.io-client, or skips t when the variable
// is unset. A set variable that points at an unusable directory, or a
// missing node binary, fails t: the run asked for these tests.
func SocketIOClientDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv(E2EDirEnv)
	if dir == "" {
		t.Skipf("set %s=<repo>/test/e2e (after `npm ci --prefix test/e2e`) to run the tests with the official Socket.IO client", E2EDirEnv)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("%s=%q: %v", E2EDirEnv, dir, err)
	}
	if _, err := os.Stat(filepath.Join(abs, "node_modules", "socket.io-client", "package.json")); err != nil {
		t.Fatalf("%s=%q has no node_modules/socket.io-client; run `npm ci --prefix test/e2e`: %v", E2EDirEnv, dir, err)
	}
	return abs
}

// Node returns the path of the node binary, failing t when there is none;
// call it after SocketIOClientDir, which decides whether the test runs.
func Node(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("%s is set but node is not on PATH: %v", E2EDirEnv, err)
	}
	return path
}
