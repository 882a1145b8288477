// Package blobtest is the conformance suite every blob.Store runs, so the
// disk store and the S3 one behave the same to the upload and the worker.
package blobtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/klectr/klectr/internal/blob"
)

// timeout bounds each subtest's calls; a conforming store on loopback needs
// a fraction of it.
const timeout = 60 * time.Second

// TestStore runs the Store contract (see package blob). newStore is called
// once per subtest and must return an empty store of that subtest's own.
func TestStore(t *testing.T, newStore func(t *testing.T) blob.Store) {
	t.Helper()

	t.Run("RoundTripIsByteExact", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		keys := make(map[string]bool)
		// 0: the empty blob; 5 MiB + 17 crosses S3's multipart part size.
		for _, size := range []int{0, 1, 64<<10 + 3, 5<<20 + 17} {
			data := randomBytes(size)
			key, err := s.Put(ctx, bytes.NewReader(data))
			if err != nil {
				t.Fatalf("Put of %d bytes: %v", size, err)
			}
			if !blob.ValidKey(key) {
				t.Fatalf("Put returned %q, not a valid key", key)
			}
			if keys[key] {
				t.Fatalf("Put returned key %s twice", key)
			}
			keys[key] = true
			if got := read(t, s, key); !bytes.Equal(got, data) {
				t.Fatalf("blob of %d bytes came back as %d bytes, sha256 %x, want %x", size, len(got), sha256.Sum256(got), sha256.Sum256(data))
			}
		}
	})

	t.Run("PutReadsAnUnseekableStream", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		data := randomBytes(6<<20 + 5)
		// The wrapper hides bytes.Reader's Seek and WriterTo; reads come short.
		key, err := s.Put(ctx, iotest.HalfReader(struct{ io.Reader }{bytes.NewReader(data)}))
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		if got := read(t, s, key); !bytes.Equal(got, data) {
			t.Fatalf("got %d bytes back, want %d byte-exact", len(got), len(data))
		}
	})

	t.Run("UnknownKeyIsNotFound", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		if _, err := s.Open(ctx, blob.NewKey()); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("Open of an unknown key = %v, want ErrNotFound", err)
		}
	})

	t.Run("HostileKeysAreNotFound", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		data := []byte("kept")
		key, err := s.Put(ctx, bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		hostile := []string{
			"", ".", "..", "../", "../../etc/passwd", "/etc/passwd", "tmp", "tmp/" + key,
			key[:2], key[:2] + "/" + key, "../" + key, key + "/..", "./" + key, key + "\x00",
			strings.ToUpper(key), key + "0", key[:31], strings.Repeat("a", 1024),
			"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "0123456789abcdef0123456789abcde/",
			"..%2f..%2fetc%2fpasswd", "%2e%2e/" + key[:26],
		}
		for _, k := range hostile {
			if rc, err := s.Open(ctx, k); !errors.Is(err, blob.ErrNotFound) {
				if err == nil {
					rc.Close()
				}
				t.Errorf("Open(%q) = %v, want ErrNotFound", k, err)
			}
		}
		if err := s.Delete(ctx, hostile...); err != nil {
			t.Errorf("Delete of invalid keys = %v, want nil", err)
		}
		if got := read(t, s, key); !bytes.Equal(got, data) {
			t.Fatalf("a valid blob changed after hostile keys: %q", got)
		}
	})

	t.Run("DeleteIgnoresMissing", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		k1, err := s.Put(ctx, strings.NewReader("one"))
		if err != nil {
			t.Fatal(err)
		}
		k2, err := s.Put(ctx, strings.NewReader("two"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, k1, k1, blob.NewKey()); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if err := s.Delete(ctx); err != nil {
			t.Fatalf("Delete of nothing: %v", err)
		}
		if _, err := s.Open(ctx, k1); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("Open after Delete = %v, want ErrNotFound", err)
		}
		if got := read(t, s, k2); string(got) != "two" {
			t.Fatalf("the other blob reads %q", got)
		}
	})

	t.Run("FailedPutLeavesNothing", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		boom := errors.New("client went away")
		// Before and after the first 5 MiB part of a multipart upload.
		for _, n := range []int{0, 1000, 6 << 20} {
			r := io.MultiReader(bytes.NewReader(randomBytes(n)), iotest.ErrReader(boom))
			if key, err := s.Put(ctx, r); err == nil {
				t.Fatalf("Put of a failing reader (after %d bytes) returned key %s", n, key)
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		r := &cancellingReader{r: bytes.NewReader(randomBytes(12 << 20)), after: 7 << 20, cancel: cancel}
		if key, err := s.Put(cctx, r); err == nil {
			t.Fatalf("Put whose ctx was cancelled mid-stream returned key %s", key)
		}
		if keys := walk(t, s, time.Now().Add(time.Hour)); len(keys) != 0 {
			t.Fatalf("failed Puts left blobs %v", keys)
		}
		if tr, ok := s.(blob.TempRemover); ok {
			if n, err := tr.RemoveTemp(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
				t.Fatalf("failed Puts left %d unfinished uploads (%v)", n, err)
			}
		}
	})

	t.Run("ConcurrentPuts", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		const n = 16
		blobs := make([][]byte, n)
		keys := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			blobs[i] = randomBytes(256<<10 + i)
			wg.Go(func() {
				var err error
				if keys[i], err = s.Put(ctx, bytes.NewReader(blobs[i])); err != nil {
					t.Errorf("Put %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for i, k := range keys {
			if got := read(t, s, k); !bytes.Equal(got, blobs[i]) {
				t.Fatalf("blob %d differs after concurrent Puts", i)
			}
		}
		if got := walk(t, s, time.Now().Add(time.Hour)); len(got) != n {
			t.Fatalf("Walk found %d blobs, want %d", len(got), n)
		}
	})

	t.Run("WalkAndSweepByAge", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		s := newStore(t)
		put := func() string {
			k, err := s.Put(ctx, strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
		oldUsed, oldOrphan := put(), put()
		// S3 lists modification times to the second.
		time.Sleep(1100 * time.Millisecond)
		cutoff := time.Now()
		time.Sleep(1100 * time.Millisecond)
		young := put()

		if got, want := walk(t, s, cutoff), sorted(oldUsed, oldOrphan); !slices.Equal(got, want) {
			t.Fatalf("Walk(cutoff) = %v, want the two old blobs %v", got, want)
		}
		stopErr := errors.New("stop")
		if err := s.Walk(ctx, cutoff, func(string) error { return stopErr }); !errors.Is(err, stopErr) {
			t.Fatalf("Walk returned %v, want fn's error", err)
		}

		var asked []string
		n, err := blob.Sweep(ctx, s, cutoff, func(_ context.Context, keys []string) (map[string]bool, error) {
			asked = append(asked, keys...)
			return map[string]bool{oldUsed: true}, nil
		})
		if err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v; want 1 deleted", n, err)
		}
		if slices.Sort(asked); !slices.Equal(asked, sorted(oldUsed, oldOrphan)) {
			t.Errorf("Sweep asked about %v, want only the old blobs", asked)
		}
		if _, err := s.Open(ctx, oldOrphan); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("old unreferenced blob still there: %v", err)
		}
		read(t, s, oldUsed)
		read(t, s, young)

		failing := errors.New("asset store down")
		if _, err := blob.Sweep(ctx, s, time.Now().Add(time.Hour), func(context.Context, []string) (map[string]bool, error) {
			return nil, failing
		}); !errors.Is(err, failing) {
			t.Fatalf("Sweep with a failing inUse = %v, want its error", err)
		}
		read(t, s, oldUsed)
		read(t, s, young)
	})
}

// TestPutMemory streams size bytes through s.Put and fails when the heap grew
// by more than bound meanwhile (run with a GC target of 10%). Only the store may allocate in this process
// while it runs: no parallel tests, and a server (if any) in another process.
func TestPutMemory(t *testing.T, s blob.Store, size, bound int64) {
	t.Helper()
	ctx := testContext(t)
	// A low GC target keeps garbage out of the figure: what is measured is
	// close to the memory the Put holds.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var (
		peak uint64
		mu   sync.Mutex
	)
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mu.Lock()
			peak = max(peak, ms.HeapAlloc)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	key, err := s.Put(ctx, io.LimitReader(zeroReader{}, size))
	elapsed := time.Since(start)
	close(done)
	<-sampled
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	grew := int64(peak) - int64(base)
	t.Logf("Put of %d MiB took %v; heap grew by at most %.1f MiB (bound %d MiB)", size>>20, elapsed.Round(time.Millisecond), float64(grew)/(1<<20), bound>>20)
	if grew > bound {
		t.Errorf("heap grew by %d bytes during a %d-byte Put; the bound is %d", grew, size, bound)
	}
	start = time.Now()
	rc, err := s.Open(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err != nil || n != size {
		t.Fatalf("read back %d bytes (%v), want %d", n, err, size)
	}
	t.Logf("Open and read of %d MiB took %v", size>>20, time.Since(start).Round(time.Millisecond))
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// cancellingReader cancels its Put's ctx once after bytes have been read.
type cancellingReader struct {
	r      io.Reader
	n      int
	after  int
	cancel func()
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	if c.n >= c.after {
		c.cancel()
	}
	return n, err
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func read(t *testing.T, s blob.Store, key string) []byte {
	t.Helper()
	rc, err := s.Open(testContext(t), key)
	if err != nil {
		t.Fatalf("Open(%s): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %s: %v", key, err)
	}
	return b
}

func walk(t *testing.T, s blob.Store, olderThan time.Time) []string {
	t.Helper()
	var keys []string
	if err := s.Walk(testContext(t), olderThan, func(k string) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	slices.Sort(keys)
	return keys
}

func sorted(keys ...string) []string {
	slices.Sort(keys)
	return keys
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)})
	r.Read(b)
	return b
}
