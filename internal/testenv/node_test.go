package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTB records how SocketIOClientDir ends a test instead of ending ours.
type fakeTB struct {
	testing.TB
	ended, msg string
}

type stop struct{}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.ended, f.msg = "skip", fmt.Sprintf(format, args...)
	panic(stop{})
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.ended, f.msg = "fatal", fmt.Sprintf(format, args...)
	panic(stop{})
}

func call(t *testing.T) (f *fakeTB, dir string) {
	f = &fakeTB{TB: t}
	defer func() {
		if r := recover(); r != nil && r != (stop{}) {
			panic(r)
		}
	}()
	return f, SocketIOClientDir(f)
}

// Not parallel: it sets the process environment.
func TestSocketIOClientDir(t *testing.T) {
	t.Setenv(E2EDirEnv, "")
	if f, _ := call(t); f.ended != "skip" || !strings.Contains(f.msg, E2EDirEnv) {
		t.Errorf("unset: ended %q with %q, want a skip naming %s", f.ended, f.msg, E2EDirEnv)
	}

	dir := t.TempDir()
	t.Setenv(E2EDirEnv, dir)
	if f, _ := call(t); f.ended != "fatal" || !strings.Contains(f.msg, "npm ci") {
		t.Errorf("without node_modules: ended %q with %q, want a failure telling to run npm ci", f.ended, f.msg)
	}

	pkg := filepath.Join(dir, "node_modules", "socket.io-client")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "package.json"), []byte(`{}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if f, got := call(t); f.ended != "" || got != dir {
		t.Errorf("installed: ended %q (%s), dir %q, want %q", f.ended, f.msg, got, dir)
	}
}
