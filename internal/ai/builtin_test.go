package ai_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	xdraw "golang.org/x/image/draw"

	"github.com/klectr/klectr/internal/ai"
)

const fixtures = "../../testdata/images"

// result mirrors the built-in analyzer's JSON object.
type result struct {
	Provider       string
	Version        int
	Format         string
	Width, Height  int
	Pixels         bool
	Orientation    int
	DominantColors []struct {
		Hex   string
		Share float64
	}
	PHash     string
	Sharpness *struct{ LaplacianVar, PeakLaplacianVar, Score float64 }
	Exposure  *struct{ Mean, DarkClipped, BrightClipped float64 }
	Verdict   string
}

func analyzeBytes(t testing.TB, a ai.Analyzer, data []byte, contentType string) (result, error) {
	t.Helper()
	raw, err := a.Analyze(t.Context(), ai.Image{AssetID: "01JTEST", ContentType: contentType, Size: int64(len(data)), Body: bytes.NewReader(data)})
	if err != nil {
		return result{}, err
	}
	if len(raw) > ai.MaxResultBytes || !bytes.HasPrefix(raw, []byte("{")) {
		t.Fatalf("result is not a JSON object within the cap: %.100s", raw)
	}
	var r result
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	return r, nil
}

func analyzeFile(t testing.TB, a ai.Analyzer, path string) (result, error) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return analyzeBytes(t, a, data, "")
}

var hex16 = regexp.MustCompile(`^[0-9a-f]{16}$`)
var hexColor = regexp.MustCompile(`^#[0-9a-f]{6}$`)

func TestBuiltinValidFixtures(t *testing.T) {
	t.Parallel()
	a := ai.NewBuiltin(ai.BuiltinConfig{})
	for _, tc := range []struct {
		file          string
		format        string
		width, height int
		verdict       string
	}{
		{"basn0g01.png", "png", 32, 32, ai.VerdictTooSmall},
		{"basn3p08.png", "png", 32, 32, ai.VerdictTooSmall},
		{"basn6a16.png", "png", 32, 32, ai.VerdictTooSmall},
		{"blue-purple-pink-large.lossless.webp", "webp", 600, 400, ai.VerdictOK},
		{"go-turns-two-280x360.jpeg", "jpeg", 280, 360, ai.VerdictOK},
		{"gopher-doc.with-alpha.lossless.webp", "webp", 75, 100, ai.VerdictTooSmall},
		// A generated gradient with pixel-level noise and no edge at all: at
		// the working size the noise averages out and nothing is sharp.
		{"photo-4032x3024.jpeg", "jpeg", 4032, 3024, ai.VerdictTooBlurry},
		{"tux.lossless.webp", "webp", 386, 395, ai.VerdictOK},
		{"video-001.cmyk.jpeg", "jpeg", 150, 103, ai.VerdictTooSmall},
		{"video-001.lossy.webp", "webp", 150, 103, ai.VerdictTooSmall},
		{"video-001.png", "png", 150, 103, ai.VerdictTooSmall},
		{"video-001.progressive.jpeg", "jpeg", 150, 103, ai.VerdictTooSmall},
		{"video-001.q50.420.jpeg", "jpeg", 150, 103, ai.VerdictTooSmall},
		{"video-001.restart2.jpeg", "jpeg", 150, 103, ai.VerdictTooSmall},
		{"video-005.gray.jpeg", "jpeg", 150, 103, ai.VerdictTooSmall},
	} {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			r, err := analyzeFile(t, a, filepath.Join(fixtures, "valid", tc.file))
			if err != nil {
				t.Fatalf("Analyze: %v", err)
			}
			if r.Provider != "builtin" || r.Version != 1 || !r.Pixels {
				t.Errorf("provider %q version %d pixels %v; want builtin 1 true", r.Provider, r.Version, r.Pixels)
			}
			if r.Format != tc.format || r.Width != tc.width || r.Height != tc.height {
				t.Errorf("got %s %dx%d, want %s %dx%d", r.Format, r.Width, r.Height, tc.format, tc.width, tc.height)
			}
			if !hex16.MatchString(r.PHash) {
				t.Errorf("phash %q is not 16 hex digits", r.PHash)
			}
			if r.Orientation != 1 {
				t.Errorf("orientation %d, want 1 (no Exif)", r.Orientation)
			}
			if n := len(r.DominantColors); n < 1 || n > 5 {
				t.Errorf("%d dominant colours, want 1–5", n)
			}
			total := 0.0
			for i, c := range r.DominantColors {
				if !hexColor.MatchString(c.Hex) || c.Share <= 0 || (i > 0 && c.Share > r.DominantColors[i-1].Share) {
					t.Errorf("colour %d = %+v: want #rrggbb with shares descending", i, c)
				}
				total += c.Share
			}
			if total > 1.0001 {
				t.Errorf("colour shares sum to %v > 1", total)
			}
			if r.Sharpness == nil || r.Exposure == nil || r.Sharpness.Score < 0 || r.Sharpness.Score > 1 ||
				r.Exposure.Mean < 0 || r.Exposure.Mean > 1 {
				t.Errorf("sharpness %+v exposure %+v: want both, scores in 0–1", r.Sharpness, r.Exposure)
			}
			if r.Verdict != tc.verdict {
				t.Errorf("verdict %q, want %q (sharpness %+v, exposure %+v)", r.Verdict, tc.verdict, r.Sharpness, r.Exposure)
			}
		})
	}
}

func TestBuiltinHEICReportsHeaderFacts(t *testing.T) {
	t.Parallel()
	r, err := analyzeFile(t, ai.NewBuiltin(ai.BuiltinConfig{}), filepath.Join(fixtures, "valid", "video-001.heic"))
	if err != nil {
		t.Fatalf("Analyze: %v", err)
	}
	if r.Provider != "builtin" || r.Format != "heic" || r.Width != 150 || r.Height != 103 || r.Pixels {
		t.Errorf("got %+v; want builtin heic 150x103 with pixels false", r)
	}
	if r.PHash != "" || r.Sharpness != nil || r.Exposure != nil || r.DominantColors != nil {
		t.Errorf("got pixel measures %+v for pixels it could not decode", r)
	}
	if r.Verdict != ai.VerdictTooSmall {
		t.Errorf("verdict %q, want too_small", r.Verdict)
	}
}

func hamming(t *testing.T, a, b string) int {
	t.Helper()
	x, err1 := strconv.ParseUint(a, 16, 64)
	y, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("phashes %q, %q: %v %v", a, b, err1, err2)
	}
	return bits.OnesCount64(x ^ y)
}

func TestBuiltinPHash(t *testing.T) {
	t.Parallel()
	a := ai.NewBuiltin(ai.BuiltinConfig{})
	hash := func(file string) string {
		r, err := analyzeFile(t, a, filepath.Join(fixtures, "valid", file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return r.PHash
	}
	png1, png2 := hash("video-001.png"), hash("video-001.png")
	if png1 != png2 {
		t.Errorf("the same file hashed %s then %s", png1, png2)
	}
	for _, other := range []string{"video-001.q50.420.jpeg", "video-001.lossy.webp", "video-001.progressive.jpeg"} {
		if d := hamming(t, png1, hash(other)); d > 4 {
			t.Errorf("%s is %d bits from the PNG it was encoded from; want ≤ 4", other, d)
		}
	}
	for _, other := range []string{"go-turns-two-280x360.jpeg", "tux.lossless.webp", "blue-purple-pink-large.lossless.webp"} {
		if d := hamming(t, png1, hash(other)); d < 16 {
			t.Errorf("%s is only %d bits from video-001.png; want ≥ 16", other, d)
		}
	}
}

// scene paints a w×h test card: a background and a grid of rectangles in
// the given palette, every edge crisp.
func scene(w, h int, bg color.Color, palette ...color.Color) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(m, m.Bounds(), image.NewUniform(bg), image.Point{}, draw.Src)
	cell := max(w, h) / 16
	i := 0
	for y := cell / 4; y+cell/2 < h; y += cell {
		for x := cell / 4; x+cell/2 < w; x += cell {
			r := image.Rect(x, y, x+cell/2+(i%3)*cell/8, y+cell/2+(i%2)*cell/8)
			draw.Draw(m, r, image.NewUniform(palette[i%len(palette)]), image.Point{}, draw.Src)
			i++
		}
	}
	return m
}

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func encodeJPEG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, m, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gray(v uint8) color.Color { return color.Gray{Y: v} }

func TestBuiltinVerdicts(t *testing.T) {
	t.Parallel()
	colourful := []color.Color{
		color.RGBA{200, 30, 30, 255}, color.RGBA{30, 160, 60, 255}, color.RGBA{40, 60, 200, 255},
		color.RGBA{230, 200, 40, 255}, color.RGBA{20, 20, 20, 255},
	}
	sharp := scene(640, 480, gray(128), colourful...)
	// Blurry: the same card painted at 1/20 the size and enlarged, so that
	// every edge becomes a 20-pixel ramp.
	tiny := scene(32, 24, gray(128), colourful...)
	blurry := image.NewRGBA(image.Rect(0, 0, 640, 480))
	xdraw.BiLinear.Scale(blurry, blurry.Bounds(), tiny, tiny.Bounds(), xdraw.Src, nil)

	for _, tc := range []struct {
		name     string
		img      image.Image
		verdict  string
		jpegOnly bool // large: PNG would only slow the race detector down
	}{
		{"sharp", sharp, ai.VerdictOK, false},
		{"large sharp", scene(1600, 1200, gray(140), colourful...), ai.VerdictOK, true},
		{"blurry", blurry, ai.VerdictTooBlurry, false},
		{"dark", scene(640, 480, gray(12), gray(40), gray(2), gray(25)), ai.VerdictTooDark, false},
		{"bright", scene(640, 480, gray(255), gray(215), gray(240), gray(225)), ai.VerdictTooBright, false},
		{"white background, dark item", scene(640, 480, gray(255), gray(40), gray(90)), ai.VerdictOK, false},
		{"small", scene(300, 180, gray(128), colourful...), ai.VerdictTooSmall, false},
	} {
		for _, enc := range []struct {
			name   string
			encode func(testing.TB, image.Image) []byte
		}{{"png", encodePNG}, {"jpeg", encodeJPEG}} {
			if tc.jpegOnly && enc.name != "jpeg" {
				continue
			}
			t.Run(tc.name+"/"+enc.name, func(t *testing.T) {
				t.Parallel()
				r, err := analyzeBytes(t, ai.NewBuiltin(ai.BuiltinConfig{}), enc.encode(t, tc.img), "image/"+enc.name)
				if err != nil {
					t.Fatalf("Analyze: %v", err)
				}
				b := tc.img.Bounds()
				if r.Format != enc.name || r.Width != b.Dx() || r.Height != b.Dy() {
					t.Errorf("got %s %dx%d, want %s %dx%d", r.Format, r.Width, r.Height, enc.name, b.Dx(), b.Dy())
				}
				if r.Verdict != tc.verdict {
					t.Errorf("verdict %q, want %q (sharpness %+v, exposure %+v)", r.Verdict, tc.verdict, r.Sharpness, r.Exposure)
				}
			})
		}
	}
}

func TestBuiltinDominantColors(t *testing.T) {
	t.Parallel()
	// 70% red, 30% blue, in two halves.
	m := image.NewRGBA(image.Rect(0, 0, 400, 300))
	draw.Draw(m, m.Bounds(), image.NewUniform(color.RGBA{0, 0, 255, 255}), image.Point{}, draw.Src)
	draw.Draw(m, image.Rect(0, 0, 280, 300), image.NewUniform(color.RGBA{255, 0, 0, 255}), image.Point{}, draw.Src)
	r, err := analyzeBytes(t, ai.NewBuiltin(ai.BuiltinConfig{}), encodePNG(t, m), "image/png")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.DominantColors) != 2 ||
		r.DominantColors[0].Hex != "#ff0000" || r.DominantColors[0].Share != 0.7 ||
		r.DominantColors[1].Hex != "#0000ff" || r.DominantColors[1].Share != 0.3 {
		t.Errorf("dominant colours %+v; want #ff0000 0.7, #0000ff 0.3", r.DominantColors)
	}
}

func TestBuiltinRefusesBrokenAndForeignFiles(t *testing.T) {
	t.Parallel()
	a := ai.NewBuiltin(ai.BuiltinConfig{})
	for _, tc := range []struct {
		file, code string
	}{
		{"invalid/invalid-noend.png", ai.CodeImageUndecodable},
		{"invalid/invalid-trunc.png", ai.CodeImageUndecodable},
		{"invalid/invalid-zlib.png", ai.CodeImageUndecodable},
		{"invalid/invalid-crc32.png", ai.CodeImageUndecodable},
		{"invalid/bomb-30000x30000.png", ai.CodeImageTooLarge},
		{"invalid/not-an-image.jpg", ai.CodeImageUnsupported},
		{"unsupported/triangle-001.gif", ai.CodeImageUnsupported},
		{"unsupported/video-001.bmp", ai.CodeImageUnsupported},
		{"unsupported/video-001.tiff", ai.CodeImageUnsupported},
	} {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			r, err := analyzeFile(t, a, filepath.Join(fixtures, tc.file))
			if err == nil {
				t.Fatalf("Analyze = %+v; want %s", r, tc.code)
			}
			if ai.Code(err) != tc.code || !ai.IsPermanent(err) {
				t.Errorf("err = %v (code %q, permanent %v); want permanent %s", err, ai.Code(err), ai.IsPermanent(err), tc.code)
			}
		})
	}
}

func TestBuiltinTruncatedHEICIsUndecodable(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(fixtures, "valid", "video-001.heic"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = analyzeBytes(t, ai.NewBuiltin(ai.BuiltinConfig{}), data[:40], "image/heic")
	if ai.Code(err) != ai.CodeImageUndecodable || !ai.IsPermanent(err) {
		t.Errorf("err = %v (code %q); want permanent image_undecodable", err, ai.Code(err))
	}
}

func TestBuiltinLimits(t *testing.T) {
	t.Parallel()
	img := encodePNG(t, scene(400, 300, gray(128), gray(10), gray(240)))
	for _, tc := range []struct {
		name string
		cfg  ai.BuiltinConfig
	}{
		{"pixels", ai.BuiltinConfig{MaxPixels: 400*300 - 1}},
		{"bytes", ai.BuiltinConfig{MaxBytes: int64(len(img)) - 1}},
	} {
		_, err := analyzeBytes(t, ai.NewBuiltin(tc.cfg), img, "image/png")
		if ai.Code(err) != ai.CodeImageTooLarge || !ai.IsPermanent(err) {
			t.Errorf("%s over the limit: err = %v; want permanent image_too_large", tc.name, err)
		}
	}
	if _, err := analyzeBytes(t, ai.NewBuiltin(ai.BuiltinConfig{MaxPixels: 400 * 300, MaxBytes: int64(len(img))}), img, "image/png"); err != nil {
		t.Errorf("exactly at both limits: %v", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestBuiltinStorageFailuresAreRetryable(t *testing.T) {
	t.Parallel()
	a := ai.NewBuiltin(ai.BuiltinConfig{})
	img := encodePNG(t, scene(400, 300, gray(128), gray(10), gray(240)))
	disk := errors.New("i/o error")
	for _, tc := range []struct {
		name string
		body io.Reader
		size int64
	}{
		{"read error at once", errReader{disk}, 0},
		{"read error after the header", io.MultiReader(bytes.NewReader(img[:100]), errReader{disk}), int64(len(img))},
		{"shorter than stored size", bytes.NewReader(img[:len(img)-10]), int64(len(img))},
	} {
		_, err := a.Analyze(t.Context(), ai.Image{AssetID: "a", ContentType: "image/png", Size: tc.size, Body: tc.body})
		if ai.Code(err) != ai.CodeImageUnreadable || ai.IsPermanent(err) {
			t.Errorf("%s: err = %v (code %q, permanent %v); want retryable image_unreadable", tc.name, err, ai.Code(err), ai.IsPermanent(err))
		}
	}
}

func TestBuiltinHonoursCanceledContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	data, err := os.ReadFile(filepath.Join(fixtures, "valid", "video-001.png"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ai.NewBuiltin(ai.BuiltinConfig{}).Analyze(ctx, ai.Image{AssetID: "a", Body: bytes.NewReader(data)})
	if !errors.Is(err, context.Canceled) || ai.IsPermanent(err) || ai.Code(err) != ai.CodeCanceled {
		t.Errorf("err = %v; want retryable ai_canceled wrapping context.Canceled", err)
	}
	if strings.Contains(err.Error(), "decode") {
		t.Errorf("err = %v mentions decoding; it should never have started", err)
	}
}
