package blob

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

func TestDiskPutOpenDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("klectr"), 10000)
	k1, err := d.Put(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := d.Put(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if k1 == k2 {
		t.Fatal("two puts got the same key")
	}
	rc, err := d.Open(ctx, k1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("bytes differ after a round trip")
	}
	if err := d.Delete(ctx, k1, k1, "0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Open(ctx, k1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open after Delete: %v", err)
	}
	if _, err := d.Open(ctx, k2); err != nil {
		t.Fatalf("other blob lost: %v", err)
	}
}

func TestDiskRefusesPathKeys(t *testing.T) {
	t.Parallel()
	d, _ := NewDisk(t.TempDir())
	for _, k := range []string{"", "../../etc/passwd", "..", "ab/../../x", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"} {
		if _, err := d.Open(context.Background(), k); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%q) = %v, want ErrNotFound", k, err)
		}
	}
}

func TestDiskFailedPutLeavesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d, _ := NewDisk(dir)
	boom := errors.New("client went away")
	_, err := d.Put(context.Background(), io.MultiReader(bytes.NewReader(make([]byte, 1000)), iotest.ErrReader(boom)))
	if !errors.Is(err, boom) {
		t.Fatalf("Put = %v, want the reader's error", err)
	}
	var files []string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 0 {
		t.Fatalf("failed put left files: %v", files)
	}
}

// TestDiskPutFailsOnTruncatedStream: a body cut short (io.ErrUnexpectedEOF
// from the multipart reader) is a failed Put, not a shorter blob.
func TestDiskPutFailsOnTruncatedStream(t *testing.T) {
	t.Parallel()
	d, _ := NewDisk(t.TempDir())
	r := io.MultiReader(bytes.NewReader(make([]byte, 100<<10)), iotest.ErrReader(io.ErrUnexpectedEOF))
	if key, err := d.Put(context.Background(), r); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Put = %q, %v; want io.ErrUnexpectedEOF", key, err)
	}
}

// TestDirSyncCoalesces: a caller that arrives while an fsync runs waits for
// the next one (the running one may have begun before its entry was made),
// and callers waiting together share that next fsync.
func TestDirSyncCoalesces(t *testing.T) {
	t.Parallel()
	var (
		mu      sync.Mutex
		fsyncs  int
		release = make(chan struct{})
		began   = make(chan struct{}, 10)
	)
	s := &dirSync{fsync: func() error {
		mu.Lock()
		fsyncs++
		mu.Unlock()
		began <- struct{}{}
		select {
		case <-release:
		case <-time.After(10 * time.Second):
			t.Error("fsync never released")
		}
		return nil
	}}
	s.cond = sync.NewCond(&s.mu)

	first := make(chan error, 1)
	go func() { first <- s.sync() }()
	wait(t, began)

	// Three callers arrive while the first fsync runs.
	const late = 3
	lateDone := make(chan error, late)
	for range late {
		go func() { lateDone <- s.sync() }()
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		n := s.waiting
		s.mu.Unlock()
		if n == late {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callers waiting after 10 s", n, late)
		}
	}
	release <- struct{}{}
	if err := waitErr(t, first); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lateDone:
		t.Fatal("a caller that arrived during an fsync returned when that fsync finished")
	case <-time.After(100 * time.Millisecond):
	}
	wait(t, began) // the second fsync, for all three
	release <- struct{}{}
	for range late {
		if err := waitErr(t, lateDone); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if fsyncs != 2 {
		t.Fatalf("%d fsyncs for 1 + %d callers, want 2", fsyncs, late)
	}
}

func wait(t *testing.T, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
	}
}

func waitErr(t *testing.T, c <-chan error) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		return nil
	}
}
