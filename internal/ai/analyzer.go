package ai

import (
	"context"
	"encoding/json"
	"io"
)

// MaxResultBytes caps the JSON object an analysis may return. It bounds what
// one asset row, one event and one API response carry.
const MaxResultBytes = 64 << 10

// Analyzer analyses one image.
//
// Implementations honour ctx (returning promptly, with a retryable error,
// once it ends), are safe for concurrent use, read img.Body at most once and
// never after Analyze returns, and never close it: the caller owns it.
// On success the result is a JSON object of at most MaxResultBytes bytes.
type Analyzer interface {
	Analyze(ctx context.Context, img Image) (json.RawMessage, error)
}

// Image is one stored upload.
type Image struct {
	AssetID string
	// ContentType was decided from the upload's magic bytes: image/jpeg,
	// image/png, image/webp, image/heic or image/heif.
	ContentType string
	// Size is the stored length in bytes, or 0 when unknown.
	Size int64
	// Body yields the stored bytes; it is read once.
	Body io.Reader
}

// extension is the file-name extension the AI service sees for a content type.
func extension(contentType string) string {
	switch contentType {
	case "image/jpeg":
		return ".jpg"
	case "image/png":
		return ".png"
	case "image/webp":
		return ".webp"
	case "image/heic":
		return ".heic"
	case "image/heif":
		return ".heif"
	}
	return ""
}
