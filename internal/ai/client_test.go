package ai_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/ai"
)

const testToken = "tok-9f8e7d6c5b4a"

// newClient returns a client for srv with the given token and timeout.
func newClient(t *testing.T, baseURL, token string, timeout time.Duration, now func() time.Time) *ai.Client {
	t.Helper()
	c, err := ai.NewClient(ai.ClientConfig{BaseURL: baseURL, Token: token, Timeout: timeout, Now: now})
	if err != nil {
		t.Fatalf("NewClient(%q): %v", baseURL, err)
	}
	return c
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// received is what the fake AI service saw of one request.
type received struct {
	method, path, auth, mediaType string
	contentLength, bodyLength     int64
	fields                        []string // form names in order
	assetID                       string
	fileName, partType            string
	image                         []byte
	err                           error
}

type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

func readRequest(r *http.Request) (got received) {
	got = received{method: r.Method, path: r.URL.Path, auth: r.Header.Get("Authorization"), contentLength: r.ContentLength}
	got.mediaType, _, _ = mime.ParseMediaType(r.Header.Get("Content-Type"))
	body := &countingReader{r: r.Body}
	r.Body = body
	defer func() { got.bodyLength = body.n }()
	mr, err := r.MultipartReader()
	if err != nil {
		got.err = err
		return got
	}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return got
		}
		if err != nil {
			got.err = err
			return got
		}
		got.fields = append(got.fields, p.FormName())
		data, err := io.ReadAll(p)
		if err != nil {
			got.err = err
			return got
		}
		switch p.FormName() {
		case "assetId":
			got.assetID = string(data)
		case "image":
			got.fileName = p.FileName()
			got.partType = p.Header.Get("Content-Type")
			got.image = data
		}
	}
}

func TestClientSendsMultipartAndReturnsObject(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, token, wantAuth string
		contentType, wantName string
	}{
		{name: "with token", token: testToken, wantAuth: "Bearer " + testToken, contentType: "image/jpeg", wantName: "01JASSET.jpg"},
		{name: "without token", token: "", wantAuth: "", contentType: "image/png", wantName: "01JASSET.png"},
		{name: "heic", token: testToken, wantAuth: "Bearer " + testToken, contentType: "image/heic", wantName: "01JASSET.heic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			seen := make(chan received, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- readRequest(r)
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, "{\n  \"labels\": [\"card\"],\n  \"score\": 0.9\n}\n")
			}))
			defer srv.Close()

			img := randomBytes(t, 300<<10)
			c := newClient(t, srv.URL+"/v1/", tc.token, 5*time.Second, nil)
			res, err := c.Analyze(t.Context(), ai.Image{AssetID: "01JASSET", ContentType: tc.contentType, Size: int64(len(img)), Body: bytes.NewReader(img)})
			if err != nil {
				t.Fatalf("Analyze: %v", err)
			}
			if want := `{"labels":["card"],"score":0.9}`; string(res) != want {
				t.Errorf("result = %s, want %s", res, want)
			}
			got := <-seen
			if got.err != nil {
				t.Fatalf("server could not read the request: %v", got.err)
			}
			if got.method != http.MethodPost || got.path != "/v1/analyze" {
				t.Errorf("request = %s %s, want POST /v1/analyze", got.method, got.path)
			}
			if got.auth != tc.wantAuth {
				t.Errorf("Authorization = %q, want %q", got.auth, tc.wantAuth)
			}
			if got.mediaType != "multipart/form-data" {
				t.Errorf("Content-Type = %q, want multipart/form-data", got.mediaType)
			}
			if strings.Join(got.fields, ",") != "assetId,image" {
				t.Errorf("form fields = %v, want [assetId image]", got.fields)
			}
			if got.assetID != "01JASSET" {
				t.Errorf("assetId = %q", got.assetID)
			}
			if got.fileName != tc.wantName || got.partType != tc.contentType {
				t.Errorf("image part filename %q type %q, want %q %q", got.fileName, got.partType, tc.wantName, tc.contentType)
			}
			if !bytes.Equal(got.image, img) {
				t.Errorf("image arrived as %d bytes, differing from the %d sent", len(got.image), len(img))
			}
			if got.contentLength != got.bodyLength {
				t.Errorf("Content-Length %d for a body of %d bytes; want the exact length when the size is known", got.contentLength, got.bodyLength)
			}
		})
	}
}

// gatedReader yields its first chunk, then waits for gate before the rest: if
// the client buffered the whole body before sending, the server would never
// see the first chunk and the gate would never open.
type gatedReader struct {
	first, rest []byte
	gate        <-chan struct{}
	ctx         context.Context
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if len(g.first) > 0 {
		n := copy(p, g.first)
		g.first = g.first[n:]
		return n, nil
	}
	select {
	case <-g.gate:
	case <-g.ctx.Done():
		return 0, g.ctx.Err()
	}
	if len(g.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.rest)
	g.rest = g.rest[n:]
	return n, nil
}

func TestClientStreamsTheImage(t *testing.T) {
	t.Parallel()
	img := randomBytes(t, 2<<20)
	const firstLen = 256 << 10
	gate := make(chan struct{})
	seen := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mr, err := r.MultipartReader()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var data []byte
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			if p.FormName() != "image" {
				continue
			}
			var buf bytes.Buffer
			if _, err := io.CopyN(&buf, p, firstLen); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			close(gate) // the first chunk arrived while the client still holds the rest
			io.Copy(&buf, p)
			data = buf.Bytes()
		}
		seen <- data
		io.WriteString(w, `{}`)
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	body := &gatedReader{first: img[:firstLen], rest: img[firstLen:], gate: gate, ctx: ctx}
	c := newClient(t, srv.URL, "", 10*time.Second, nil)
	if _, err := c.Analyze(ctx, ai.Image{AssetID: "a", ContentType: "image/png", Body: body}); err != nil {
		t.Fatalf("Analyze: %v (a buffering client deadlocks here)", err)
	}
	if got := <-seen; !bytes.Equal(got, img) {
		t.Errorf("server got %d bytes, differing from the %d sent", len(got), len(img))
	}
}

func TestClientClassifiesStatuses(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name          string
		status        int
		retryAfter    string
		body          string
		wantCode      string
		wantPermanent bool
		wantDelay     time.Duration // 0: RetryAfter reports false
		wantInMessage string
	}{
		{name: "500", status: 500, body: "boom", wantCode: ai.CodeUnavailable, wantInMessage: "(500 Internal Server Error): boom"},
		{name: "502", status: 502, wantCode: ai.CodeUnavailable, wantInMessage: "502"},
		{name: "503 without Retry-After", status: 503, wantCode: ai.CodeUnavailable},
		{name: "503 Retry-After seconds", status: 503, retryAfter: "7", wantCode: ai.CodeUnavailable, wantDelay: 7 * time.Second},
		{name: "500 ignores Retry-After", status: 500, retryAfter: "7", wantCode: ai.CodeUnavailable},
		{name: "429 without Retry-After", status: 429, wantCode: ai.CodeRateLimited, wantInMessage: "429 Too Many Requests"},
		{name: "429 Retry-After seconds", status: 429, retryAfter: "120", wantCode: ai.CodeRateLimited, wantDelay: 2 * time.Minute},
		{name: "429 Retry-After date", status: 429, retryAfter: now.Add(90 * time.Second).Format(http.TimeFormat), wantCode: ai.CodeRateLimited, wantDelay: 90 * time.Second},
		{name: "429 Retry-After capped", status: 429, retryAfter: "86400", wantCode: ai.CodeRateLimited, wantDelay: ai.MaxRetryAfter},
		{name: "429 Retry-After far date capped", status: 429, retryAfter: now.Add(48 * time.Hour).Format(http.TimeFormat), wantCode: ai.CodeRateLimited, wantDelay: ai.MaxRetryAfter},
		{name: "429 Retry-After in the past", status: 429, retryAfter: now.Add(-time.Minute).Format(http.TimeFormat), wantCode: ai.CodeRateLimited},
		{name: "429 Retry-After garbage", status: 429, retryAfter: "soon", wantCode: ai.CodeRateLimited},
		// delay-seconds is digits only: a negative count must not wrap
		// around time.Duration into a long positive delay.
		{name: "429 Retry-After negative overflow", status: 429, retryAfter: "-9223372037", wantCode: ai.CodeRateLimited},
		{name: "429 Retry-After most negative", status: 429, retryAfter: "-9223372036854775808", wantCode: ai.CodeRateLimited},
		{name: "429 Retry-After signed", status: 429, retryAfter: "+30", wantCode: ai.CodeRateLimited},
		{name: "429 Retry-After exponent", status: 429, retryAfter: "1e3", wantCode: ai.CodeRateLimited},
		{name: "429 Retry-After beyond uint64", status: 429, retryAfter: "99999999999999999999999", wantCode: ai.CodeRateLimited, wantDelay: ai.MaxRetryAfter},
		{name: "408", status: 408, wantCode: ai.CodeTimeout, wantInMessage: "408"},
		{name: "400", status: 400, body: `{"error":"image too small"}`, wantCode: ai.CodeRejected, wantPermanent: true, wantInMessage: `(400 Bad Request): {"error":"image too small"}`},
		{name: "401", status: 401, wantCode: ai.CodeRejected, wantPermanent: true, wantInMessage: "401 Unauthorized"},
		{name: "404", status: 404, wantCode: ai.CodeRejected, wantPermanent: true, wantInMessage: "404 Not Found"},
		{name: "422", status: 422, wantCode: ai.CodeRejected, wantPermanent: true, wantInMessage: "422 Unprocessable Entity"},
		{name: "302 is not followed", status: 302, wantCode: ai.CodeBadResponse, wantPermanent: true, wantInMessage: "302 Found"},
		{name: "204", status: 204, wantCode: ai.CodeBadResponse, wantPermanent: true, wantInMessage: "204 No Content"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				if tc.status == 302 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(tc.status)
				// Services echo credentials more often than one would hope.
				io.WriteString(w, tc.body+" "+r.Header.Get("Authorization"))
			}))
			defer srv.Close()

			c := newClient(t, srv.URL, testToken, 5*time.Second, func() time.Time { return now })
			res, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/jpeg", Body: strings.NewReader("jpeg bytes")})
			if err == nil {
				t.Fatalf("Analyze = %s, nil; want an error", res)
			}
			if got := ai.Code(err); got != tc.wantCode {
				t.Errorf("Code = %q, want %q (err: %v)", got, tc.wantCode, err)
			}
			if got := ai.IsPermanent(err); got != tc.wantPermanent {
				t.Errorf("IsPermanent = %v, want %v (err: %v)", got, tc.wantPermanent, err)
			}
			d, ok := ai.RetryAfter(err)
			if ok != (tc.wantDelay > 0) || d != tc.wantDelay {
				t.Errorf("RetryAfter = %v, %v; want %v", d, ok, tc.wantDelay)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantInMessage) {
				t.Errorf("message %q does not mention %q", msg, tc.wantInMessage)
			}
			if strings.Contains(msg, testToken) {
				t.Errorf("message %q leaks the token", msg)
			}
		})
	}
}

func TestClientValidatesTheResult(t *testing.T) {
	t.Parallel()
	exact := `{"pad":"` + strings.Repeat("x", ai.MaxResultBytes-len(`{"pad":""}`)) + `"}`
	for _, tc := range []struct {
		name, body    string
		wantCode      string // "" means success
		wantPermanent bool
	}{
		{name: "object at the cap", body: exact},
		{name: "invalid JSON", body: `{"labels": ["ca`, wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "empty body", body: ``, wantCode: ai.CodeBadResponse, wantPermanent: true},
		// Defects of a hostile review: each was stored as a draft, or
		// failed in the store and was retried until the job died.
		{name: "invalid UTF-8", body: "{\"label\":\"caf\xe9\"}", wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "1500-deep object", body: nested(1500), wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "error envelope", body: `{"error":"model overloaded"}`, wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "status error", body: `{"status":"error","message":"no card"}`, wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "NUL", body: `{"a":"\u0000"}`, wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "array", body: `[{"label":"card"}]`, wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "string", body: `"card"`, wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "null", body: `null`, wantCode: ai.CodeBadResponse, wantPermanent: true},
		{name: "over the cap", body: `{"pad":"` + strings.Repeat("x", ai.MaxResultBytes) + `"}`, wantCode: ai.CodeResponseTooLarge, wantPermanent: true},
		{name: "far over the cap", body: `{"pad":"` + strings.Repeat("x", 4<<20) + `"}`, wantCode: ai.CodeResponseTooLarge, wantPermanent: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()

			c := newClient(t, srv.URL, "", 5*time.Second, nil)
			res, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/webp", Body: strings.NewReader("webp")})
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("Analyze: %v", err)
				}
				if string(res) != tc.body {
					t.Errorf("result of %d bytes differs from the %d-byte body", len(res), len(tc.body))
				}
				return
			}
			if err == nil {
				t.Fatalf("Analyze succeeded with %d bytes; want %s", len(res), tc.wantCode)
			}
			if ai.Code(err) != tc.wantCode || ai.IsPermanent(err) != tc.wantPermanent {
				t.Errorf("Code, IsPermanent = %q, %v; want %q, %v (err: %v)", ai.Code(err), ai.IsPermanent(err), tc.wantCode, tc.wantPermanent, err)
			}
			if len(err.Error()) > 400 {
				t.Errorf("message is %d bytes long; want a short one", len(err.Error()))
			}
		})
	}
}

func TestClientTimeout(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done() // a service that never answers
	}))
	defer srv.Close()

	c := newClient(t, srv.URL, "", 50*time.Millisecond, nil)
	_, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Body: strings.NewReader("png")})
	if ai.Code(err) != ai.CodeTimeout || ai.IsPermanent(err) {
		t.Fatalf("err = %v (code %q, permanent %v); want retryable %s", err, ai.Code(err), ai.IsPermanent(err), ai.CodeTimeout)
	}
	if !strings.Contains(err.Error(), "50ms") {
		t.Errorf("message %q does not name the timeout", err)
	}
}

func TestClientTimeoutWhileReadingBody(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"partial":`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()

	c := newClient(t, srv.URL, "", 100*time.Millisecond, nil)
	_, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Body: strings.NewReader("png")})
	if ai.Code(err) != ai.CodeTimeout || ai.IsPermanent(err) {
		t.Fatalf("err = %v (code %q, permanent %v); want retryable %s", err, ai.Code(err), ai.IsPermanent(err), ai.CodeTimeout)
	}
}

func TestClientHonoursCallerCancel(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		close(arrived)
		<-r.Context().Done()
	}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-arrived
		cancel()
	}()
	c := newClient(t, srv.URL, "", time.Minute, nil)
	_, err := c.Analyze(ctx, ai.Image{AssetID: "a", ContentType: "image/png", Body: strings.NewReader("png")})
	if !errors.Is(err, context.Canceled) || ai.Code(err) != ai.CodeCanceled || ai.IsPermanent(err) {
		t.Fatalf("err = %v (code %q, permanent %v); want retryable %s wrapping context.Canceled", err, ai.Code(err), ai.IsPermanent(err), ai.CodeCanceled)
	}
}

func TestClientConnectionRefused(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	c := newClient(t, "http://"+addr, testToken, 5*time.Second, nil)
	_, err = c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Body: strings.NewReader("png")})
	if ai.Code(err) != ai.CodeUnavailable || ai.IsPermanent(err) {
		t.Fatalf("err = %v (code %q, permanent %v); want retryable %s", err, ai.Code(err), ai.IsPermanent(err), ai.CodeUnavailable)
	}
	if msg := err.Error(); !strings.Contains(msg, "connection refused") || strings.Contains(msg, addr) {
		t.Errorf("message %q: want the reason without the internal address", msg)
	}
}

func TestClientServiceAnswersBeforeReadingBody(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unauthorized", http.StatusUnauthorized) // without reading the body
	}))
	defer srv.Close()

	c := newClient(t, srv.URL, "", 5*time.Second, nil)
	_, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Body: bytes.NewReader(make([]byte, 32<<20))})
	if ai.Code(err) != ai.CodeRejected || !ai.IsPermanent(err) {
		t.Fatalf("err = %v; want permanent %s", err, ai.CodeRejected)
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(p), f.n)
	f.n -= n
	return n, nil
}

func TestClientImageReadFailureIsRetryable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		io.WriteString(w, `{}`)
	}))
	defer srv.Close()

	c := newClient(t, srv.URL, "", 5*time.Second, nil)
	_, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Body: &failingReader{n: 100 << 10}})
	if ai.Code(err) != ai.CodeImageUnreadable || ai.IsPermanent(err) {
		t.Fatalf("err = %v (code %q, permanent %v); want retryable %s", err, ai.Code(err), ai.IsPermanent(err), ai.CodeImageUnreadable)
	}
}

func TestClientImageOfTheWrongSizeIsRetryable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		io.WriteString(w, `{}`)
	}))
	defer srv.Close()

	c := newClient(t, srv.URL, "", 5*time.Second, nil)
	img := randomBytes(t, 64<<10)
	for _, size := range []int64{int64(len(img)) + 10, int64(len(img)) - 10} {
		_, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Size: size, Body: bytes.NewReader(img)})
		if ai.Code(err) != ai.CodeImageUnreadable || ai.IsPermanent(err) {
			t.Errorf("recorded size %d for %d bytes: err = %v (code %q); want retryable %s", size, len(img), err, ai.Code(err), ai.CodeImageUnreadable)
		}
	}
}

func TestNewClientRejectsBadURLs(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "localhost:9000", "ftp://ai/", "http://", "://x"} {
		if _, err := ai.NewClient(ai.ClientConfig{BaseURL: u}); err == nil {
			t.Errorf("NewClient(%q) succeeded; want an error", u)
		}
	}
	if _, err := ai.NewClient(ai.ClientConfig{BaseURL: "http://user:hunter2@ai:9000/"}); err != nil {
		t.Errorf("NewClient with userinfo: %v", err)
	}
	_, err := ai.NewClient(ai.ClientConfig{BaseURL: "gopher://user:hunter2@ai/"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("NewClient error %v: want one without the password", err)
	}
}

// TestClientQuotesRemoteTextSafely: the reason phrase of a status line and
// the text of a 200 error envelope are the service's own bytes; the messages
// that quote them reach users, stores and websocket frames, so they must be
// printable UTF-8 without the token.
func TestClientQuotesRemoteTextSafely(t *testing.T) {
	t.Parallel()
	hostile := "Slow\xff\xfe Down\x00\x1b[31m\u202e " + testToken
	t.Run("reason phrase", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			// net/http hands the status line's reason phrase over as sent.
			io.WriteString(c, "HTTP/1.1 503 "+hostile+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		}()
		c := newClient(t, "http://"+ln.Addr().String(), testToken, 5*time.Second, nil)
		_, err = c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/jpeg", Body: strings.NewReader("jpeg")})
		if ai.Code(err) != ai.CodeUnavailable {
			t.Fatalf("Analyze: %v (code %q); want %s", err, ai.Code(err), ai.CodeUnavailable)
		}
		checkSafeMessage(t, err.Error(), "Slow Down")
	})
	t.Run("error envelope", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			// Valid JSON, so that the envelope, not the syntax, is refused.
			text := strings.NewReplacer("\xff\xfe", "", "\x00", "", "\x1b", `\u001b`).Replace(hostile)
			io.WriteString(w, `{"label":"card","error":"`+text+`"}`)
		}))
		defer srv.Close()
		c := newClient(t, srv.URL, testToken, 5*time.Second, nil)
		_, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/jpeg", Body: strings.NewReader("jpeg")})
		if ai.Code(err) != ai.CodeBadResponse || !ai.IsPermanent(err) {
			t.Fatalf("Analyze: %v (code %q); want a permanent %s", err, ai.Code(err), ai.CodeBadResponse)
		}
		if !strings.Contains(err.Error(), "error report") {
			t.Errorf("message %q does not say the answer was an error report", err)
		}
		checkSafeMessage(t, err.Error(), "Slow Down")
	})
}

func checkSafeMessage(t *testing.T, msg, want string) {
	t.Helper()
	if !utf8.ValidString(msg) {
		t.Errorf("message is not valid UTF-8: %q", msg)
	}
	if strings.ContainsFunc(msg, func(r rune) bool { return !unicode.IsPrint(r) }) {
		t.Errorf("message holds unprintable characters: %q", msg)
	}
	if strings.Contains(msg, testToken) {
		t.Errorf("message leaks the token: %q", msg)
	}
	if !strings.Contains(msg, want) || !strings.Contains(msg, "[redacted]") {
		t.Errorf("message %q does not quote %q with the token redacted", msg, want)
	}
}

// A call made under a span sends its W3C traceparent, so that the AI
// service's spans join the asset's trace; one made without a span (tracing
// off) sends none.
func TestClientSendsTraceparent(t *testing.T) {
	t.Parallel()
	seen := make(chan http.Header, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"label":"card"}`)
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, "", 5*time.Second, nil)
	img := randomBytes(t, 1<<10)
	analyze := func(ctx context.Context) http.Header {
		t.Helper()
		if _, err := c.Analyze(ctx, ai.Image{AssetID: "01JASSET", ContentType: "image/png", Size: int64(len(img)), Body: bytes.NewReader(img)}); err != nil {
			t.Fatalf("Analyze: %v", err)
		}
		return <-seen
	}

	if h := analyze(t.Context()); h.Get("Traceparent") != "" || h.Get("Tracestate") != "" {
		t.Fatalf("a call without a span sent traceparent %q", h.Get("Traceparent"))
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	h := analyze(trace.ContextWithSpanContext(t.Context(), sc))
	if got, want := h.Get("Traceparent"), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; got != want {
		t.Fatalf("traceparent %q, want %q", got, want)
	}
}

// With MaxConns, the client keeps that many connections to the service
// between requests: a second wave of as many concurrent jobs dials none.
func TestClientReusesConnections(t *testing.T) {
	t.Parallel()
	const jobs = 8
	var mu sync.Mutex
	dialled := 0
	var arrived sync.WaitGroup
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		arrived.Done()
		arrived.Wait() // every request of the wave is in flight at once
		io.WriteString(w, `{}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			dialled++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	c, err := ai.NewClient(ai.ClientConfig{BaseURL: srv.URL, Timeout: 10 * time.Second, MaxConns: jobs})
	if err != nil {
		t.Fatal(err)
	}
	wave := func() {
		arrived.Add(jobs)
		var wg sync.WaitGroup
		for range jobs {
			wg.Go(func() {
				if _, err := c.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Body: strings.NewReader("png")}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	wave()
	mu.Lock()
	first := dialled
	mu.Unlock()
	wave()
	mu.Lock()
	defer mu.Unlock()
	if first != jobs || dialled != jobs {
		t.Errorf("connections dialled: %d for the first wave of %d jobs, %d in all after the second; want %d and no more",
			first, jobs, dialled, jobs)
	}
}
