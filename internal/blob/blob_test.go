package blob

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
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
