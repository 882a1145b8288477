package blob_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/blob/blobtest"
)

func TestDiskStore(t *testing.T) {
	blobtest.TestStore(t, func(t *testing.T) blob.Store {
		d, err := blob.NewDisk(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// Not parallel: it measures the process's heap.
func TestDiskPutMemory(t *testing.T) {
	d, err := blob.NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blobtest.TestPutMemory(t, d, 64<<20, 4<<20)
}

// TestSweepDiskOrphansAndTempFiles ages files by hand: orphans and partial
// writes older than the cutoff go; referenced blobs, young blobs and young
// partial writes (an upload in progress) stay.
func TestSweepDiskOrphansAndTempFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	d, err := blob.NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	cutoff := time.Now().Add(-time.Hour)
	age := func(p string) {
		t.Helper()
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	blobPath := func(k string) string { return filepath.Join(dir, k[:2], k) }
	put := func() string {
		k, err := d.Put(ctx, strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	// More than two inUse batches of orphans, written as a crash leaves
	// them (Put's fsyncs would make this slow).
	var orphans []string
	for range 1200 {
		k := blob.NewKey()
		if err := os.MkdirAll(filepath.Dir(blobPath(k)), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(blobPath(k), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		age(blobPath(k))
		orphans = append(orphans, k)
	}
	used, young := put(), put()
	age(blobPath(used))
	oldTemp := filepath.Join(dir, "tmp", blob.NewKey()+".123")
	youngTemp := filepath.Join(dir, "tmp", blob.NewKey()+".456")
	for _, p := range []string{oldTemp, youngTemp} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	age(oldTemp)
	stray := filepath.Join(dir, "README")
	if err := os.WriteFile(stray, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	age(stray)

	calls := 0
	n, err := blob.Sweep(ctx, d, cutoff, func(_ context.Context, keys []string) (map[string]bool, error) {
		calls++
		if len(keys) > 500 {
			t.Errorf("inUse got %d keys at once", len(keys))
		}
		m := make(map[string]bool)
		for _, k := range keys {
			if k == used {
				m[k] = true
			}
		}
		return m, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := len(orphans) + 1; n != want {
		t.Errorf("Sweep deleted %d, want %d orphans + 1 temp file", n, want)
	}
	if calls < 3 {
		t.Errorf("inUse called %d times for 1201 old blobs; want batches", calls)
	}
	for _, k := range orphans {
		if _, err := os.Stat(blobPath(k)); !os.IsNotExist(err) {
			t.Fatalf("orphan %s kept: %v", k, err)
		}
	}
	for _, p := range []string{blobPath(used), blobPath(young), youngTemp, stray} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	if _, err := os.Stat(oldTemp); !os.IsNotExist(err) {
		t.Errorf("old temp file kept: %v", err)
	}
}

// crashChildEnv makes the test binary a process that starts a Put into the
// directory it names and blocks until it is killed.
const crashChildEnv = "KLECTR_BLOB_CRASH_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		d, err := blob.NewDisk(dir)
		if err != nil {
			panic(err)
		}
		pr, pw := io.Pipe()
		go func() {
			pw.Write(make([]byte, 64<<10))
			select {} // the client stalls; the parent kills us
		}()
		d.Put(context.Background(), pr)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// TestSweepAfterKillMidPut: a process killed with SIGKILL in the middle of a
// Put leaves a partial file in tmp and no blob; the sweep removes it once it
// is older than the cutoff.
func TestSweepAfterKillMidPut(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	tmp := filepath.Join(dir, "tmp")
	var partial string
	for deadline := time.Now().Add(20 * time.Second); partial == ""; {
		if time.Now().After(deadline) {
			t.Fatal("the child wrote no partial file within 20 s")
		}
		entries, _ := os.ReadDir(tmp)
		for _, e := range entries {
			if info, err := e.Info(); err == nil && info.Size() == 64<<10 {
				partial = filepath.Join(tmp, e.Name())
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	d, err := blob.NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	none := func(context.Context, []string) (map[string]bool, error) { return nil, nil }
	if n, err := blob.Sweep(ctx, d, time.Now().Add(-time.Hour), none); err != nil || n != 0 {
		t.Fatalf("Sweep with a cutoff before the crash = %d, %v; want nothing deleted", n, err)
	}
	if _, err := os.Stat(partial); err != nil {
		t.Fatalf("the killed Put left no partial file to sweep: %v", err)
	}
	n, err := blob.Sweep(ctx, d, time.Now().Add(time.Second), none)
	if err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want the 1 partial file deleted", n, err)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Fatalf("partial file still there: %v", err)
	}
}
