// Package imageinfo tells, from the header of an uploaded file, whether it is an
// image the pipeline accepts and how large it is, so that the upload handler can
// refuse a file before anything is stored or queued.
//
// The contract:
//
//   - The type is decided by the file's magic bytes alone. The client's file name
//     and Content-Type are never consulted (Inspect does not even see them).
//     Accepted: JPEG, PNG, WebP, and HEIC/HEIF (an ISO-BMFF file whose ftyp box
//     carries a HEIF brand and no AVIF brand). Anything else, an empty file
//     included, is ErrUnsupported (HTTP 415).
//   - A file whose magic bytes name an accepted type but whose header cannot be
//     read (bad checksum, truncated, malformed boxes, zero dimensions, a JPEG
//     variant Go cannot decode) is ErrInvalid (HTTP 422).
//   - Only the header is read, never the pixels: a decompression bomb costs a few
//     kilobytes to inspect, and a file with a sound header but broken pixel data
//     passes here (the worker's full decode finds that later).
//   - Width and Height are the stored dimensions, before any EXIF orientation or
//     HEIF transform (irot, imir, clap) is applied, for every format alike. For
//     HEIC/HEIF they are the ispe property of the primary item (for a grid image,
//     the whole grid, not a tile). Inspect enforces no pixel limit: the caller
//     compares Info.Pixels with MAX_PIXELS.
//   - Inspect reads at most MaxHeaderBytes from r, whatever r holds, and holds at
//     most MaxHEIFMetaBytes of it in memory. A header that is not complete within
//     that cap is ErrInvalid.
//   - An error that wraps neither ErrUnsupported nor ErrInvalid is a failure to read
//     r itself (a disk error, say). It says nothing about the file, so the caller
//     should treat it as an internal error, not as the client's fault.
//
// JPEG, PNG and WebP headers are read by the Go decoders' DecodeConfig
// (image/jpeg, image/png, golang.org/x/image/webp), called directly rather than
// through image.DecodeConfig: the process-wide format registry would let any
// package that imports, say, image/gif change what this package accepts.
// HEIC/HEIF boxes are parsed here, since Go has no HEIF decoder.
package imageinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/webp"
)

// Format is an accepted image format.
type Format string

// The accepted formats.
const (
	JPEG Format = "jpeg"
	PNG  Format = "png"
	WebP Format = "webp"
	HEIC Format = "heic" // HEIF with HEVC-coded images (brands heic, heix, heim, heis, hevc, hevx)
	HEIF Format = "heif" // other HEIF (brands mif1, msf1), e.g. JPEG- or AVC-coded items
)

// contentType is the media type stored with the asset and sent to the AI service.
func (f Format) contentType() string {
	return "image/" + string(f)
}

// Info is what the header of a supported image says.
type Info struct {
	Format      Format
	ContentType string // image/jpeg, image/png, image/webp, image/heic, image/heif
	Width       int    // > 0 whenever Inspect succeeds
	Height      int    // > 0 whenever Inspect succeeds
}

// Pixels returns Width*Height. Inspect never returns a side over math.MaxInt32,
// so for its results the product cannot overflow, whatever the size of int.
func (i Info) Pixels() int64 {
	return int64(i.Width) * int64(i.Height)
}

// Errors returned by Inspect, wrapped with a reason a user can read.
var (
	// ErrUnsupported: the magic bytes are not those of JPEG, PNG, WebP or HEIC/HEIF.
	ErrUnsupported = errors.New("unsupported image type")
	// ErrInvalid: the magic bytes name a supported type, but its header cannot be read.
	ErrInvalid = errors.New("invalid image")
)

// Read caps.
const (
	// MaxHeaderBytes caps the bytes Inspect consumes from its reader. Every
	// accepted format puts its dimensions near the start of the file; the one
	// that may sit far in is JPEG's SOF marker, which follows the APPn segments
	// (EXIF with its thumbnail, ICC profiles and extended XMP split across
	// several 64 KiB segments). Those stay well under 4 MiB in real photos, and
	// uploads are at most 10 MiB anyway. For HEIF the cap also bounds the boxes
	// (such as an mdat) skipped before the meta box.
	MaxHeaderBytes = 4 << 20
	// MaxHEIFMetaBytes caps the HEIF meta box, which Inspect reads into memory to
	// parse. Real meta boxes, grids of dozens of tiles included, are a few KiB.
	MaxHEIFMetaBytes = 1 << 20
)

const accepted = "accepted: JPEG, PNG, WebP, HEIC/HEIF"

const pngSignature = "\x89PNG\r\n\x1a\n"

// errHeaderTooLong is returned by the capped reader once MaxHeaderBytes are consumed.
var errHeaderTooLong = errors.New("header read cap reached")

// Inspect identifies the image in r by its magic bytes and reads its dimensions
// from its header; see the package documentation for the contract. It reads at
// most MaxHeaderBytes from r (buffered, so possibly a few KiB past the header)
// and leaves r at an unspecified position.
func Inspect(r io.Reader) (Info, error) {
	cr := &cappedReader{r: r, n: MaxHeaderBytes}
	br := bufio.NewReader(cr)
	magic, err := br.Peek(12)
	if err != nil && cr.err != nil {
		return Info{}, fmt.Errorf("imageinfo: reading the image: %w", cr.err)
	}

	var (
		f    Format
		w, h int
	)
	switch {
	case bytes.HasPrefix(magic, []byte{0xFF, 0xD8, 0xFF}):
		f = JPEG
		w, h, err = decodeConfig(jpeg.DecodeConfig, br)
	case bytes.HasPrefix(magic, []byte(pngSignature)):
		f = PNG
		w, h, err = decodeConfig(png.DecodeConfig, br)
	case len(magic) == 12 && string(magic[:4]) == "RIFF" && string(magic[8:12]) == "WEBP":
		f = WebP
		w, h, err = decodeConfig(webp.DecodeConfig, br)
	case len(magic) == 12 && string(magic[4:8]) == "ftyp":
		f, w, h, err = inspectHEIF(br, string(magic[8:12]))
		if errors.Is(err, ErrUnsupported) {
			return Info{}, err
		}
	default:
		return Info{}, unsupported(magic)
	}
	if err != nil {
		return Info{}, readFailure(f, err, cr)
	}
	if w <= 0 || h <= 0 || w > math.MaxInt32 || h > math.MaxInt32 {
		return Info{}, fmt.Errorf("%w: the %s header gives an impossible size of %dx%d", ErrInvalid, name(f), w, h)
	}
	return Info{Format: f, ContentType: f.contentType(), Width: w, Height: h}, nil
}

func decodeConfig(dc func(io.Reader) (image.Config, error), r io.Reader) (w, h int, err error) {
	c, err := dc(r)
	return c.Width, c.Height, err
}

// readFailure classifies an error met while reading the header of an image of
// format f: a read error of r itself, the cap, truncation, or a malformed header.
func readFailure(f Format, err error, cr *cappedReader) error {
	switch {
	case cr.err != nil && errors.Is(err, cr.err):
		return fmt.Errorf("imageinfo: reading the image: %w", err)
	case errors.Is(err, ErrInvalid):
		return err
	case errors.Is(err, errHeaderTooLong):
		return fmt.Errorf("%w: no complete %s header within the first %d MiB", ErrInvalid, name(f), MaxHeaderBytes>>20)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return fmt.Errorf("%w: the %s header is truncated", ErrInvalid, name(f))
	default:
		return fmt.Errorf("%w: unreadable %s header: %w", ErrInvalid, name(f), err)
	}
}

// unsupported explains a rejection by naming the file's type where its magic
// bytes make that certain, so that a user who sent a GIF is told so.
func unsupported(magic []byte) error {
	var what string
	switch {
	case len(magic) == 0:
		return fmt.Errorf("%w: the file is empty", ErrUnsupported)
	case bytes.HasPrefix(magic, []byte("GIF87a")), bytes.HasPrefix(magic, []byte("GIF89a")):
		what = "GIF"
	case bytes.HasPrefix(magic, []byte("II*\x00")), bytes.HasPrefix(magic, []byte("MM\x00*")):
		what = "TIFF"
	case len(magic) >= 10 && bytes.HasPrefix(magic, []byte("BM")) && bytes.Equal(magic[6:10], []byte{0, 0, 0, 0}):
		what = "BMP"
	default:
		return fmt.Errorf("%w: not a JPEG, PNG, WebP or HEIC/HEIF image", ErrUnsupported)
	}
	return fmt.Errorf("%w: %s (%s)", ErrUnsupported, what, accepted)
}

// name is how messages spell a format.
func name(f Format) string {
	switch f {
	case WebP:
		return "WebP"
	case "":
		return "HEIF"
	default:
		return string(bytes.ToUpper([]byte(f)))
	}
}

// cappedReader hands out at most n bytes of r, then errHeaderTooLong, and
// remembers the first error of r other than io.EOF so that a failing disk is
// not reported as a broken image.
type cappedReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errHeaderTooLong
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}
