package ai

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"runtime"

	"golang.org/x/image/webp"
)

// Defaults of BuiltinConfig.
const (
	// DefaultMaxPixels matches the upload limit MAX_PIXELS, which should have
	// refused anything larger already; the analyzer checks again from the
	// header because a full decode costs 4 bytes a pixel.
	DefaultMaxPixels = 50_000_000
	// DefaultMaxBytes bounds the stored file read into memory for decoding.
	DefaultMaxBytes = 64 << 20
)

// Verdicts of the built-in analyzer.
const (
	VerdictOK        = "ok"
	VerdictTooSmall  = "too_small"
	VerdictTooDark   = "too_dark"
	VerdictTooBright = "too_bright"
	VerdictTooBlurry = "too_blurry"
)

// Verdict thresholds. They are checked in the order below and the first that
// applies wins: a tiny image cannot be judged for blur, and an under- or
// overexposed one has lost the edges a blur measure needs, so calling it blurry
// would point the user at the wrong fix.
const (
	// MinShortSide: a short side under 200 px is too_small (a thumbnail, not a
	// photo of an item anyone can review).
	MinShortSide = 200
	// TooDarkMean: mean luma (0–1) under 0.15 is too_dark. A normal indoor
	// photo sits around 0.3–0.6; an item on a black cloth still above 0.15.
	TooDarkMean = 0.15
	// TooBrightMean and TooBrightClipped: mean luma over 0.88 with at least
	// half of the pixels clipped to white is too_bright. Both are needed: an
	// item on a white sheet is bright but keeps its own detail.
	TooBrightMean    = 0.88
	TooBrightClipped = 0.5
	// TooBlurryPeak: when even the sharpest tenth of the image has a Laplacian
	// variance under 40 (8-bit luma, at the working size) it is too_blurry.
	// The sharpest tiles are used, not the whole frame, because a sharp item
	// on a plain background has a low whole-frame variance.
	TooBlurryPeak = 40
)

// workSize is the long side, in pixels, of the image the measures run on: the
// decoded image is box-filtered down to at most this before anything else.
// 512 rather than 256: blur that matters at 12 MP (a defocus of ~10 px)
// shrinks to under a pixel at 256 and becomes invisible to the Laplacian.
const workSize = 512

// BuiltinConfig configures the built-in analyzer. The zero value is usable.
type BuiltinConfig struct {
	// MaxConcurrentDecodes bounds how many images are decoded at full size at
	// once (each costs about 4 bytes a pixel: ~200 MB at 50 MP, ~50 MB for a
	// 12 MP photo). An Analyze beyond the bound waits, honouring its ctx. Zero
	// or negative means runtime.GOMAXPROCS(0) at construction: decoding is CPU
	// bound, so more would not finish sooner, only hold more memory.
	MaxConcurrentDecodes int
	// MaxPixels refuses (permanently, image_too_large) an image whose header
	// promises more pixels. Zero means DefaultMaxPixels; pass MAX_PIXELS.
	MaxPixels int64
	// MaxBytes refuses (permanently, image_too_large) a stored file larger than
	// this. Zero means DefaultMaxBytes.
	MaxBytes int64
	// Logger receives one debug line per analysis; nil discards.
	Logger *slog.Logger
}

// Builtin is the Analyzer used when no AI service is configured. It is pure Go
// and computes facts from the pixels only; it never guesses what the item is
// or what it is worth. Its result is a JSON object:
//
//	provider        "builtin"
//	version         1; bumped when a measure changes, so phashes of different versions are not compared
//	format          "jpeg", "png", "webp", "heic" or "heif" (from the magic bytes)
//	width, height   stored dimensions of the original, before EXIF orientation
//	pixels          false when the pixels could not be analysed (HEIC/HEIF): only header facts follow
//	orientation     EXIF orientation 1–8 from a JPEG's APP1 Exif block, 1 when absent and for PNG and WebP
//	                (whose rare EXIF chunks are not read); omitted for HEIC/HEIF, whose irot/imir are not read
//	dominantColors  up to 5 {hex, share}, largest first; fewer when the image has fewer distinct colours
//	phash           64-bit DCT perceptual hash, 16 hex digits, of the image as displayed (orientation applied)
//	sharpness       {laplacianVar, peakLaplacianVar, score 0–1}
//	exposure        {mean 0–1, darkClipped, brightClipped: fractions of pixels}
//	verdict         ok, too_small, too_dark, too_bright or too_blurry (see the Verdict thresholds)
//
// Transparent pixels (alpha under 50%) are left out of the colour and exposure
// measures; sharpness and phash see the image composited over white.
//
// An image whose pixels cannot be decoded is a permanent image_undecodable
// error, never a result.
type Builtin struct {
	decodes   chan struct{} // semaphore of full-size decodes
	maxPixels int64
	maxBytes  int64
	dct       dctTable
	log       *slog.Logger
}

var _ Analyzer = (*Builtin)(nil)

// NewBuiltin returns the built-in analyzer.
func NewBuiltin(cfg BuiltinConfig) *Builtin {
	n := cfg.MaxConcurrentDecodes
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	b := &Builtin{
		decodes:   make(chan struct{}, n),
		maxPixels: cfg.MaxPixels,
		maxBytes:  cfg.MaxBytes,
		dct:       newDCTTable(),
		log:       cfg.Logger,
	}
	if b.maxPixels <= 0 {
		b.maxPixels = DefaultMaxPixels
	}
	if b.maxBytes <= 0 {
		b.maxBytes = DefaultMaxBytes
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	return b
}

// builtinResult is the JSON object Builtin returns.
type builtinResult struct {
	Provider       string     `json:"provider"`
	Version        int        `json:"version"`
	Format         string     `json:"format"`
	Width          int        `json:"width"`
	Height         int        `json:"height"`
	Pixels         bool       `json:"pixels"`
	Orientation    int        `json:"orientation,omitempty"`
	DominantColors []colorOut `json:"dominantColors,omitempty"`
	PHash          string     `json:"phash,omitempty"`
	Sharpness      *sharpness `json:"sharpness,omitempty"`
	Exposure       *exposure  `json:"exposure,omitempty"`
	Verdict        string     `json:"verdict"`
}

const builtinVersion = 1

// Analyze decodes img and measures it; see Builtin.
func (b *Builtin) Analyze(ctx context.Context, img Image) (json.RawMessage, error) {
	if img.Body == nil {
		return nil, &Error{Code: CodeInternal, Permanent: true, Message: "ai: image has no body"}
	}
	if ctx.Err() != nil {
		return nil, contextError(ctx)
	}
	br := bufio.NewReader(img.Body)
	head, err := br.Peek(12)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, readImageError(err)
	}
	format := sniff(head)
	var res *builtinResult
	switch format {
	case "":
		return nil, &Error{
			Code:      CodeImageUnsupported,
			Permanent: true,
			Message:   fmt.Sprintf("the built-in analyzer reads JPEG, PNG, WebP and HEIC/HEIF; this file (%s) is none of them", orUnknown(img.ContentType)),
		}
	case "heif":
		res, err = b.analyzeHEIF(br)
	default:
		res, err = b.analyzePixels(ctx, format, br, img.Size)
	}
	if err != nil {
		return nil, err
	}
	out, err := json.Marshal(res)
	if err != nil {
		return nil, &Error{Code: CodeInternal, Message: "ai: encoding the result failed", Err: err}
	}
	b.log.DebugContext(ctx, "builtin analysis done", "assetId", img.AssetID, "format", res.Format, "verdict", res.Verdict)
	return out, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown type"
	}
	return s
}

// sniff names the format by magic bytes: jpeg, png, webp, "heif" for any
// ISO-BMFF file (told apart from other ISO-BMFF later), or "".
func sniff(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0xFF, 0xD8, 0xFF}):
		return "jpeg"
	case bytes.HasPrefix(head, []byte("\x89PNG\r\n\x1a\n")):
		return "png"
	case len(head) >= 12 && string(head[:4]) == "RIFF" && string(head[8:12]) == "WEBP":
		return "webp"
	case len(head) >= 12 && string(head[4:8]) == "ftyp":
		return "heif"
	}
	return ""
}

// analyzePixels decodes a JPEG, PNG or WebP image and measures it. The
// full-size image exists only while this holds a decode slot.
func (b *Builtin) analyzePixels(ctx context.Context, format string, r io.Reader, size int64) (*builtinResult, error) {
	select {
	case b.decodes <- struct{}{}:
	case <-ctx.Done():
		return nil, contextError(ctx)
	}
	held := true
	release := func() {
		if held {
			<-b.decodes
			held = false
		}
	}
	defer release()

	data, err := b.readAll(r, size)
	if err != nil {
		return nil, err
	}
	decodeConfig, decode := decoders(format)
	cfg, err := decodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, undecodable(format, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, undecodable(format, fmt.Errorf("impossible size %dx%d", cfg.Width, cfg.Height))
	}
	if px := int64(cfg.Width) * int64(cfg.Height); px > b.maxPixels {
		return nil, &Error{
			Code:      CodeImageTooLarge,
			Permanent: true,
			Message:   fmt.Sprintf("image is %dx%d (%.1f megapixels); the limit is %.1f megapixels", cfg.Width, cfg.Height, float64(px)/1e6, float64(b.maxPixels)/1e6),
		}
	}
	if ctx.Err() != nil {
		return nil, contextError(ctx)
	}
	orientation := 1
	if format == "jpeg" {
		orientation = jpegOrientation(data)
	}
	m, err := decode(bytes.NewReader(data))
	if err != nil {
		return nil, undecodable(format, err)
	}
	if ctx.Err() != nil {
		return nil, contextError(ctx)
	}
	work, err := reduce(ctx, m, workSize)
	if err != nil {
		return nil, err
	}
	release() // m, the full-size image, is garbage from here on

	res := &builtinResult{
		Provider:    "builtin",
		Version:     builtinVersion,
		Format:      format,
		Width:       cfg.Width,
		Height:      cfg.Height,
		Pixels:      true,
		Orientation: orientation,
	}
	s := measure(work)
	res.DominantColors = s.colors
	res.Exposure = &s.exposure
	res.Sharpness = &s.sharpness
	res.PHash = b.dct.phash(s.luma, orientation)
	res.Verdict = verdict(cfg.Width, cfg.Height, s)
	return res, nil
}

// readAll reads the stored file, bounded by maxBytes. A short read against the
// stored size is retryable: the store, not the image, is at fault.
func (b *Builtin) readAll(r io.Reader, size int64) ([]byte, error) {
	var buf bytes.Buffer
	if size > 0 && size <= b.maxBytes {
		buf.Grow(int(size) + bytes.MinRead)
	}
	n, err := buf.ReadFrom(io.LimitReader(r, b.maxBytes+1))
	if err != nil {
		return nil, readImageError(err)
	}
	if n > b.maxBytes {
		return nil, &Error{
			Code:      CodeImageTooLarge,
			Permanent: true,
			Message:   fmt.Sprintf("image file is over the analyzer's %d MiB limit", b.maxBytes>>20),
		}
	}
	if size > 0 && n != size {
		return nil, readImageError(fmt.Errorf("read %d bytes of a %d-byte stored file", n, size))
	}
	return buf.Bytes(), nil
}

// decoders are called directly rather than through image.Decode, whose
// process-wide format registry any imported package can extend.
func decoders(format string) (config func(io.Reader) (image.Config, error), decode func(io.Reader) (image.Image, error)) {
	switch format {
	case "jpeg":
		return jpeg.DecodeConfig, jpeg.Decode
	case "png":
		return png.DecodeConfig, png.Decode
	}
	return webp.DecodeConfig, webp.Decode
}

func undecodable(format string, err error) error {
	return &Error{
		Code:      CodeImageUndecodable,
		Permanent: true,
		Message:   fmt.Sprintf("the %s image cannot be decoded: %v", format, err),
		Err:       err,
	}
}

// verdict applies the thresholds documented with MinShortSide and after.
func verdict(w, h int, s stats) string {
	switch {
	case min(w, h) < MinShortSide:
		return VerdictTooSmall
	case s.exposure.Mean < TooDarkMean:
		return VerdictTooDark
	case s.exposure.Mean > TooBrightMean && s.exposure.BrightClipped >= TooBrightClipped:
		return VerdictTooBright
	case s.sharpness.PeakLaplacianVar < TooBlurryPeak:
		return VerdictTooBlurry
	}
	return VerdictOK
}
