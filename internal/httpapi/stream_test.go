package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"runtime"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/httpapi"
)

// writePaddedJPEG writes a valid JPEG of about size bytes: base with as
// many 64 KiB comment (COM) segments as fit, inserted right after its SOF
// segment, so that the header — and the dimensions — stay within the first
// few hundred bytes while the file is large. It writes from one reused
// buffer, so the writer holds no copy of the file either.
func writePaddedJPEG(w io.Writer, base []byte, size int) (int64, error) {
	sofEnd := -1
	for i := 2; i+4 <= len(base) && base[i] == 0xFF; {
		m := base[i+1]
		n := int(binary.BigEndian.Uint16(base[i+2:]))
		if m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC {
			sofEnd = i + 2 + n
			break
		}
		i += 2 + n
	}
	if sofEnd < 0 {
		return 0, fmt.Errorf("no SOF segment in the base JPEG")
	}
	const segPayload = 0xFFFF - 2
	seg := make([]byte, 4+segPayload)
	copy(seg, []byte{0xFF, 0xFE, 0xFF, 0xFF})
	for i := 4; i < len(seg); i++ {
		seg[i] = byte('a' + i%26)
	}
	var total int64
	write := func(b []byte) error {
		n, err := w.Write(b)
		total += int64(n)
		return err
	}
	if err := write(base[:sofEnd]); err != nil {
		return total, err
	}
	for range (size - len(base)) / len(seg) {
		if err := write(seg); err != nil {
			return total, err
		}
	}
	return total, write(base[sofEnd:])
}

// TestUploadStreamsTenMegabytes: a 10 MB image goes through the handler
// without the handler holding it: the process allocates, and its heap
// grows by, far less than the file's size. The body comes from an io.Pipe
// fed from one reused 64 KiB buffer, so the client holds no copy either.
//
// Not parallel: the figures are process-wide, and no parallel test runs
// while a sequential one does.
func TestUploadStreamsTenMegabytes(t *testing.T) {
	e := newEnv(t)
	base := fixture(t, "valid/go-turns-two-280x360.jpeg")
	tok := e.token(t, "u1", "")
	const size = 10_000_000

	pr, pw := io.Pipe()
	sum := sha256.New()
	var written int64
	go func() {
		mw := multipart.NewWriter(pw)
		mw.SetBoundary(testBoundary)
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="images"; filename="big.jpg"`)
		p, err := mw.CreatePart(h)
		if err == nil {
			written, err = writePaddedJPEG(io.MultiWriter(p, sum), base, size)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req := e.request(t, "POST", "/api/assets/analyze-queue", tok, pr)
	req.Header.Set("Content-Type", multipartType)

	// Sample the heap while the request runs.
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop, sampled := make(chan struct{}), make(chan uint64)
	go func() {
		peak := before.HeapInuse
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				sampled <- peak
				return
			case <-tick.C:
				runtime.ReadMemStats(&m)
				peak = max(peak, m.HeapInuse)
			}
		}
	}()
	start := time.Now()
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	elapsed := time.Since(start)
	close(stop)
	peak := <-sampled
	var after runtime.MemStats
	runtime.ReadMemStats(&after)

	alloc := after.TotalAlloc - before.TotalAlloc
	growth := int64(peak) - int64(before.HeapInuse)
	t.Logf("%d-byte JPEG in %v: TotalAlloc +%d bytes (client and server), peak HeapInuse +%d bytes over %d, %d GCs",
		written, elapsed.Round(time.Millisecond), alloc, growth, before.HeapInuse, after.NumGC-before.NumGC)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	checkContract(t, req, res, body, false)
	if written < 9_900_000 || written > 10<<20 {
		t.Fatalf("the padded JPEG is %d bytes; the test needs about 10 MB under 10 MiB", written)
	}
	const bound = 3 << 20
	if alloc > bound {
		t.Errorf("the request allocated %d bytes for a %d-byte file; a streaming handler needs < %d", alloc, written, bound)
	}
	if growth > bound {
		t.Errorf("the heap grew by %d bytes for a %d-byte file; a streaming handler needs < %d", growth, written, bound)
	}

	subs := e.intake.submitted()
	if len(subs) != 1 || len(subs[0].Assets) != 1 {
		t.Fatalf("submissions %+v", subs)
	}
	a := subs[0].Assets[0]
	wantSum := hex.EncodeToString(sum.Sum(nil))
	if a.Size != written || a.SHA256 != wantSum || a.ContentType != "image/jpeg" || a.Width != 280 || a.Height != 360 {
		t.Errorf("asset %+v, want %d bytes, sha256 %s, image/jpeg 280x360", *a, written, wantSum)
	}
	rc, err := e.blobs.Open(context.Background(), a.BlobKey)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got := hashOf(t, rc); got != wantSum {
		t.Errorf("the blob's sha256 is %s, want %s", got, wantSum)
	}
}

func hashOf(t *testing.T, r io.Reader) string {
	t.Helper()
	var h hash.Hash = sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// slowLimits is a progress deadline short enough to test: at least 1 KiB
// in every window.
func slowLimits(window time.Duration) httpapi.Limits {
	l := defaultLimits()
	l.MinBodyBytes, l.BodyWindow = 1<<10, window
	return l
}

// rawUpload sends a multipart upload over a plain TCP connection: the
// headers at once, then body in chunks of chunk bytes every every, until
// the body is sent or the server answers. It returns the response and how
// much of the body went out.
func rawUpload(t *testing.T, e *env, token string, body []byte, chunk int, every time.Duration) (*http.Response, []byte, int) {
	t.Helper()
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A bound on the whole exchange, so that a server that never cuts the
	// trickle fails the test instead of hanging it.
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "POST /api/assets/analyze-queue HTTP/1.1\r\nHost: klectr\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: %s\r\nContent-Length: %d\r\n\r\n", token, multipartType, len(body))

	answered := make(chan struct{})
	sentc := make(chan int, 1)
	go func() {
		sent := 0
		defer func() { sentc <- sent }()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for sent < len(body) {
			n := min(chunk, len(body)-sent)
			if _, err := conn.Write(body[sent : sent+n]); err != nil {
				return
			}
			sent += n
			select {
			case <-answered:
				return
			case <-tick.C:
			}
		}
	}()
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	close(answered)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	sent := <-sentc
	check := httptest.NewRequest("POST", "/api/assets/analyze-queue", nil)
	check.Header.Set("Authorization", "Bearer "+token)
	checkContract(t, check, res, b, false)
	return res, b, sent
}

// TestUploadTrickleIsCutOff: a client that sends a few bytes every 100 ms
// (80 B/s against a minimum of 1 KiB per 200 ms) gets 408 request_timeout
// after about one window, and nothing of its request is kept.
func TestUploadTrickleIsCutOff(t *testing.T) {
	t.Parallel()
	e := newEnvUnstarted(t, withLimits(slowLimits(200*time.Millisecond)))
	e.srv.Config.ReadHeaderTimeout = 2 * time.Second
	e.srv.Start()
	body := multipartBody(t, false, files(t, "valid/go-turns-two-280x360.jpeg")...)

	start := time.Now()
	res, b, sent := rawUpload(t, e, e.token(t, "u1", ""), body, 8, 100*time.Millisecond)
	elapsed := time.Since(start)
	t.Logf("cut off after %v and %d of %d bytes", elapsed.Round(time.Millisecond), sent, len(body))
	r := reply{res, b}
	br := r.wantError(t, http.StatusRequestTimeout, "request_timeout")
	if res.Header.Get("Connection") != "close" && !res.Close {
		t.Errorf("a 408 should close the connection")
	}
	t.Logf("message: %s", br.Error.Message)
	if sent >= len(body) {
		t.Errorf("the whole body went out before the cut")
	}
	if elapsed > 5*time.Second {
		t.Errorf("cut off after %v; the window is 200 ms", elapsed)
	}
	e.wantNothingKept(t)
}

// TestUploadSlowButSteadyCompletes: a client sending 2 KiB every 50 ms
// (about 40 KiB/s, 20 times the minimum of 1 KiB per 500 ms — a margin for
// a loaded machine) completes with 202 although the upload lasts several
// windows: the deadline is a progress deadline, not a fixed total.
func TestUploadSlowButSteadyCompletes(t *testing.T) {
	t.Parallel()
	lim := slowLimits(500 * time.Millisecond)
	e := newEnvUnstarted(t, withLimits(lim))
	e.srv.Config.ReadHeaderTimeout = 2 * time.Second
	e.srv.Start()
	a, b := expect(t, "valid/go-turns-two-280x360.jpeg"), expect(t, "valid/video-001.png")
	body := multipartBody(t, false, filePart(a.name, a.data), filePart(b.name, b.data))

	start := time.Now()
	res, resBody, sent := rawUpload(t, e, e.token(t, "u1", ""), body, 2<<10, 50*time.Millisecond)
	elapsed := time.Since(start)
	t.Logf("%d of %d bytes in %v", sent, len(body), elapsed.Round(time.Millisecond))
	checkAccepted(t, e, "u1", []upFile{a, b}, reply{res, resBody})
	if elapsed < 3*lim.BodyWindow {
		t.Errorf("the upload took %v, not several windows of %v: the test proves nothing", elapsed, lim.BodyWindow)
	}
}

// TestUploadSlowCommitAfterTheBody: once the whole body has arrived, the
// progress deadline has nothing left to guard. An intake that takes longer
// than one window to commit (a busy database) must still see a live
// context and the client must get its 202.
func TestUploadSlowCommitAfterTheBody(t *testing.T) {
	t.Parallel()
	lim := slowLimits(200 * time.Millisecond)
	// Every read that brings a byte moves the deadline, the last one (which
	// also brings EOF) included.
	lim.MinBodyBytes = 1
	e := newEnv(t, withLimits(lim))
	e.intake.set(func(f *fakeIntake) {
		f.submitHook = func(ctx context.Context) error {
			// Deliberate timing: a commit that lasts three windows.
			select {
			case <-ctx.Done():
				return fmt.Errorf("the request context ended while committing: %w", context.Cause(ctx))
			case <-time.After(3 * lim.BodyWindow):
				return nil
			}
		}
	})
	f := expect(t, "valid/basn0g01.png")
	r := e.upload(t, e.token(t, "u1", ""), multipartBody(t, false, filePart(f.name, f.data)))
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d after a slow commit: %s", r.StatusCode, bytes.TrimSpace(r.Body))
	}
}

// slowDisk is blob.Disk whose Put takes extra time after the bytes are in,
// as an fsync on a busy disk does.
type slowDisk struct {
	*blob.Disk
	extra time.Duration
}

func (d slowDisk) Put(ctx context.Context, r io.Reader) (string, error) {
	key, err := d.Disk.Put(ctx, r)
	if err == nil {
		// Deliberate timing: the server's own work outlasts a window.
		select {
		case <-time.After(d.extra):
		case <-ctx.Done():
		}
	}
	return key, err
}

// TestUploadSlowDiskIsNotTheClientsFault: the progress deadline measures
// the client. When the server itself pauses between two files (a slow
// fsync) for longer than a window, a client that sent everything at once
// must not get 408.
func TestUploadSlowDiskIsNotTheClientsFault(t *testing.T) {
	t.Parallel()
	lim := slowLimits(200 * time.Millisecond)
	e := newEnv(t, withLimits(lim), func(d *httpapi.Deps) {
		d.Blobs = slowDisk{Disk: d.Blobs.(*blob.Disk), extra: 3 * lim.BodyWindow}
	})
	a, b := expect(t, "valid/video-001.png"), expect(t, "valid/go-turns-two-280x360.jpeg")
	body := multipartBody(t, false, filePart(a.name, a.data), filePart(b.name, b.data))
	checkAccepted(t, e, "u1", []upFile{a, b}, e.upload(t, e.token(t, "u1", ""), body))
}
