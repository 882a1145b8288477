package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/imageinfo"
)

// uploadField is the multipart field that carries the images.
const uploadField = "images"

// maxTextField bounds a non-file form field, which is read and ignored.
const maxTextField = 64 << 10

// stored is one file of a request, written to the blob store and inspected.
type stored struct {
	key      string
	filename string
	size     int64
	sha256   string
	info     imageinfo.Info
}

// analyzeQueue is POST /api/assets/analyze-queue: stream every file of field
// "images" to the blob store (hashing on the way), check its type and size
// from its bytes, and hand all assets to the intake, which commits them and
// their jobs at once. Any refusal
// removes every blob the request wrote: a request is all or nothing.
//
// With an Idempotency-Key, the intake keeps the 202's body under the key
// (idempotency.Submitter): a repeat of the request gets it again and
// creates nothing, and its blobs are removed like a refused request's. The
// key is decided only once the whole body has been read (its fingerprint
// covers the files), so a refused upload never reaches the key.
func (s *Server) analyzeQueue(w http.ResponseWriter, r *http.Request) {
	received := s.Now().UTC().Truncate(time.Millisecond)
	ctx := r.Context()
	user := claims(r).UserID
	key, apiErr := idempotencyKey(r)
	if apiErr != nil {
		s.writeError(w, r, apiErr)
		return
	}
	if s.Limiter != nil {
		if ok, wait := s.Limiter.Allow(user); !ok {
			secs := max(1, int((wait+time.Second-1)/time.Second))
			e := errorf(codeRateLimited, "too many uploads; retry in %d s", secs)
			e.retryAfter = time.Duration(secs) * time.Second
			s.writeError(w, r, e)
			return
		}
	}

	files, apiErr := s.receive(w, r)
	ok := false
	defer func() {
		if ok {
			return
		}
		keys := make([]string, len(files))
		for i, f := range files {
			keys[i] = f.key
		}
		if err := s.Blobs.Delete(context.WithoutCancel(ctx), keys...); err != nil {
			s.log.ErrorContext(ctx, "removing the blobs of a refused upload", "userId", user, "err", err)
		}
	}()
	if apiErr != nil {
		if apiErr.Code == codeRequestTimeout || apiErr.Code == codeFileTooLarge {
			// The rest of the body is not worth reading.
			w.Header().Set("Connection", "close")
		}
		s.writeError(w, r, apiErr)
		return
	}

	now := s.Now().UTC().Truncate(time.Millisecond)
	assets := make([]*asset.Asset, len(files))
	for i, f := range files {
		a := &asset.Asset{
			ID:              s.NewID(),
			UserID:          user,
			Status:          asset.StatusProcessing,
			ProcessingJobID: s.NewID(),
			Filename:        f.filename,
			ContentType:     f.info.ContentType,
			Size:            f.size,
			SHA256:          f.sha256,
			Width:           f.info.Width,
			Height:          f.info.Height,
			BlobKey:         f.key,
			CreatedAt:       now,
			UpdatedAt:       now,
			ReceivedAt:      &received,
		}
		assets[i] = a
	}
	body := acceptedBody(assets)
	cctx, commit := s.startCommit(ctx, assets)
	if key == "" {
		err := s.Intake.Submit(cctx, assets)
		endSpan(commit, err)
		if err != nil {
			s.writeError(w, r, internalError(codeUnavailable, err))
			return
		}
	} else {
		fp := make([]idempotency.File, len(files))
		for i, f := range files {
			fp[i] = idempotency.File{Name: f.filename, Size: f.size, SHA256: f.sha256}
		}
		c := idempotency.Claim{UserID: user, Key: key, Fingerprint: idempotency.Fingerprint(user, fp), Response: body, At: now}
		keyLog := idempotency.LogID(user, key)
		prior, err := s.Intake.SubmitOnce(cctx, assets, c)
		endSpan(commit, err)
		switch {
		case errors.Is(err, idempotency.ErrReused):
			s.log.InfoContext(ctx, "idempotency key reused with another body", "userId", user, "idempotencyKey", keyLog)
			s.writeError(w, r, errorf(codeKeyReused, "this Idempotency-Key was used with another request; send that request again to get its response, or use a new key"))
			return
		case errors.Is(err, idempotency.ErrInFlight):
			e := errorf(codeConflict, "a request with this Idempotency-Key is still being processed; retry it in a moment")
			e.retryAfter = time.Second
			s.writeError(w, r, e)
			return
		case err != nil:
			s.writeError(w, r, internalError(codeUnavailable, err))
			return
		case prior != nil:
			s.log.InfoContext(ctx, "upload repeated; the first response is replayed", "userId", user, "idempotencyKey", keyLog)
			w.Header().Set("Idempotent-Replayed", "true")
			writeRawJSON(w, http.StatusAccepted, prior.Response)
			return
		}
	}
	ok = true
	for _, a := range assets {
		s.log.InfoContext(ctx, "asset accepted", "assetId", a.ID, "jobId", a.ProcessingJobID, "userId", user,
			"contentType", a.ContentType, "size", a.Size, "width", a.Width, "height", a.Height)
	}
	writeRawJSON(w, http.StatusAccepted, body)
}

// acceptedBody is the 202's body for assets, as a replay sends it again.
func acceptedBody(assets []*asset.Asset) []byte {
	type accepted struct {
		AssetID  string `json:"assetId"`
		JobID    string `json:"jobId"`
		Status   string `json:"status"`
		Filename string `json:"filename"`
	}
	out := make([]accepted, len(assets))
	for i, a := range assets {
		out[i] = accepted{a.ID, a.ProcessingJobID, string(a.Status), a.Filename}
	}
	b, err := json.Marshal(map[string]any{"assets": out})
	if err != nil {
		panic(err) // strings only
	}
	return append(b, '\n')
}

// idempotencyKey reads the request's Idempotency-Key ("" when it has none).
func idempotencyKey(r *http.Request) (string, *apiError) {
	vs := r.Header.Values(idempotency.Header)
	if len(vs) == 0 {
		return "", nil
	}
	if len(vs) > 1 {
		e := errorf(codeBadRequest, "send one Idempotency-Key header, not %d", len(vs))
		e.Field = idempotency.Header
		return "", e
	}
	key, err := idempotency.ParseKey(vs[0])
	if err != nil {
		// The message names the rule, never the key.
		e := errorf(codeBadRequest, "the Idempotency-Key header is not valid: %s", strings.TrimPrefix(err.Error(), idempotency.ErrInvalidKey.Error()+": "))
		e.Field = idempotency.Header
		return "", e
	}
	return key, nil
}

// receive reads the multipart body. It returns every file it stored, also
// when it fails, so that the caller can remove them.
func (s *Server) receive(w http.ResponseWriter, r *http.Request) ([]stored, *apiError) {
	lim := s.Limits
	maxBody := int64(lim.MaxFiles)*lim.MaxFileBytes + 1<<20 // files plus multipart framing
	if r.ContentLength > maxBody {
		return nil, errorf(codeFileTooLarge, "the request is %s; at most %d files of %s each are accepted",
			formatBytes(r.ContentLength), lim.MaxFiles, formatBytes(lim.MaxFileBytes))
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return nil, errorf(codeBadRequest, "the body must be multipart/form-data with files in field %q", uploadField)
	}

	rc := http.NewResponseController(w)
	body := &progressReader{
		r:      http.MaxBytesReader(w, r.Body, maxBody),
		min:    lim.MinBodyBytes,
		window: lim.BodyWindow,
		extend: func(d time.Duration) { rc.SetReadDeadline(time.Now().Add(d)) },
	}
	body.extend(lim.BodyWindow)
	closed := newCloseWatch(body, params["boundary"])
	mr := multipart.NewReader(closed, params["boundary"])

	var files []stored
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) && closed.seen {
			break
		}
		if errors.Is(err, io.EOF) {
			// multipart.Reader also says io.EOF for a body cut short
			// after a delimiter, or in which the boundary never occurs.
			return files, errorf(codeBadRequest, "the multipart body ends without its closing boundary %s", quoted("--"+params["boundary"]+"--"))
		}
		if err != nil {
			return files, s.bodyError(lim, body.err, err)
		}
		index := len(files)
		if part.FormName() == "" {
			// A part without a parseable form-data Content-Disposition
			// cannot be told from a file: refuse it rather than drop it.
			return files, errorf(codeBadRequest, "part %d has no form-data Content-Disposition with a field name", index)
		}
		if part.FormName() != uploadField {
			if part.FileName() != "" {
				return files, errorf(codeBadRequest, "unknown file field %s; send images in field %q", quoted(part.FormName()), uploadField)
			}
			// A plain text field: read and ignore, bounded.
			if n, err := io.Copy(io.Discard, io.LimitReader(part, maxTextField+1)); err != nil {
				return files, s.bodyError(lim, body.err, err)
			} else if n > maxTextField {
				return files, errorf(codeBadRequest, "form field %s is longer than %d bytes", quoted(part.FormName()), maxTextField)
			}
			continue
		}
		if index == lim.MaxFiles {
			e := fileError(index, codeTooManyFiles, "more than %d files in one request; the limit is %d", lim.MaxFiles, lim.MaxFiles)
			return files, e
		}
		f, apiErr := s.storePart(r.Context(), index, part, body)
		// Storing and inspecting took the server's time, not the client's.
		body.resume()
		if f.key != "" {
			files = append(files, f)
		}
		if apiErr != nil {
			return files, apiErr
		}
	}
	if len(files) == 0 {
		return nil, errorf(codeNoFiles, "no file in field %q", uploadField)
	}
	return files, nil
}

// storePart streams one file to the blob store, hashing and counting it,
// then reads its header back to decide its type and dimensions.
func (s *Server) storePart(ctx context.Context, index int, part *multipart.Part, body *progressReader) (stored, *apiError) {
	lim := s.Limits
	f := stored{filename: cleanFilename(part.FileName())}
	h := sha256.New()
	src := &countingReader{r: io.LimitReader(part, lim.MaxFileBytes+1), h: h}
	key, err := s.Blobs.Put(ctx, src)
	if err != nil {
		if src.err != nil {
			return f, s.bodyError(lim, body.err, src.err)
		}
		return f, internalError(codeUnavailable, fmt.Errorf("store image %d: %w", index, err))
	}
	f.key, f.size, f.sha256 = key, src.n, hex.EncodeToString(h.Sum(nil))
	if f.size > lim.MaxFileBytes {
		return f, fileError(index, codeFileTooLarge, "image %d is over the limit of %s per file", index, formatBytes(lim.MaxFileBytes))
	}

	rc, err := s.Blobs.Open(ctx, key)
	if err != nil {
		return f, internalError(codeUnavailable, fmt.Errorf("read back image %d: %w", index, err))
	}
	info, err := imageinfo.Inspect(rc)
	rc.Close()
	switch {
	case errors.Is(err, imageinfo.ErrUnsupported):
		return f, fileError(index, codeUnsupported, "image %d: %v", index, err)
	case errors.Is(err, imageinfo.ErrInvalid):
		return f, fileError(index, codeInvalidImage, "image %d: %v", index, err)
	case err != nil:
		return f, internalError(codeUnavailable, fmt.Errorf("inspect image %d: %w", index, err))
	}
	if info.Pixels() > lim.MaxPixels {
		return f, fileError(index, codeInvalidImage, "image %d is %dx%d (%.1f megapixels); the limit is %.1f megapixels",
			index, info.Width, info.Height, float64(info.Pixels())/1e6, float64(lim.MaxPixels)/1e6)
	}
	f.info = info
	return f, nil
}

// bodyError explains why the request body could not be read. readErr is the
// underlying read error, if the body reader saw one.
func (s *Server) bodyError(lim Limits, readErr, err error) *apiError {
	if readErr == nil {
		readErr = err
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(readErr, &tooBig):
		return errorf(codeFileTooLarge, "the request is larger than %s; at most %d files of %s each are accepted",
			formatBytes(tooBig.Limit), lim.MaxFiles, formatBytes(lim.MaxFileBytes))
	case errors.Is(readErr, os.ErrDeadlineExceeded):
		return errorf(codeRequestTimeout, "the upload stalled: less than %s arrived in %s", formatBytes(lim.MinBodyBytes), lim.BodyWindow)
	}
	// The parser's error may quote the client's bytes (a malformed header
	// line of megabytes): the reply keeps a short, valid start of it.
	return errorf(codeBadRequest, "the multipart body is malformed: %s", shorten(strings.ToValidUTF8(err.Error(), "\uFFFD"), 200))
}

// quoted renders text from the client for an error message: Go-quoted, so
// that any bytes come out as printable UTF-8, and cut to its first 64 bytes,
// so that a reply never grows with what the client sent.
func quoted(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	return strconv.Quote(shorten(s, max))
}

// shorten cuts s to at most max bytes at a rune start, marking the cut.
func shorten(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// progressReader extends the connection's read deadline each time min more
// bytes have arrived: a progress deadline rather than a fixed total, so a
// large upload on a slow but moving network completes while a trickle is
// cut off after one window. It remembers the first read error.
type progressReader struct {
	r      io.Reader
	min    int64
	window time.Duration
	extend func(time.Duration)
	n      int64
	err    error
	// ended is set once the body has returned an error or EOF. From then
	// on the connection's read deadline belongs to net/http (its
	// background read after the body's end): a deadline set now would
	// cancel the request's context when it passes, mid-commit.
	ended bool
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if err != nil {
		p.ended = true
		if err != io.EOF && p.err == nil {
			p.err = err
		}
	}
	p.n += int64(n)
	if p.n >= p.min && !p.ended {
		p.n = 0
		p.extend(p.window)
	}
	return n, err
}

// resume starts a new window when the handler comes back to reading after
// work of its own (an fsync, reading a header back): the deadline is
// absolute, and that pause was not the client's.
func (p *progressReader) resume() {
	if !p.ended {
		p.n = 0
		p.extend(p.window)
	}
}

// countingReader hashes and counts what passes through and remembers the
// read error, so that a failed Put can tell a broken body from a full disk.
type countingReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	c.h.Write(b[:n])
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// cleanFilename keeps the client's file name as data only: valid UTF-8, no
// control or bidi-control characters (U+202E would disguise "gpj.exe"), no
// line or paragraph separator, no directory part, at most 255 bytes.
func cleanFilename(name string) string {
	name = strings.ToValidUTF8(name, "")
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.In(r, unicode.Bidi_Control, unicode.Zl, unicode.Zp) || r == '/' || r == '\\' {
			return -1
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	if name == "." || name == ".." {
		return ""
	}
	for len(name) > 255 {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	return name
}

// formatBytes writes n for people: 10 MiB, 512 KiB, 300 bytes.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// closeWatch tells whether the multipart close delimiter ("\r\n--" +
// boundary + "--", or "--" + boundary + "--" at the very start) went
// through it. File data cannot contain it: the multipart reader would have
// ended the part there.
type closeWatch struct {
	r    io.Reader
	pat  []byte
	win  []byte // the last len(pat)-1 bytes read, then the new ones
	seen bool
}

func newCloseWatch(r io.Reader, boundary string) *closeWatch {
	return &closeWatch{r: r, pat: []byte("\r\n--" + boundary + "--"), win: []byte("\r\n")}
}

func (c *closeWatch) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 && !c.seen {
		c.win = append(c.win, b[:n]...)
		c.seen = bytes.Contains(c.win, c.pat)
		if keep := len(c.pat) - 1; len(c.win) > keep {
			c.win = append(c.win[:0], c.win[len(c.win)-keep:]...)
		}
	}
	return n, err
}
