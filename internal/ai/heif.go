package ai

import (
	"errors"
	"fmt"
	"io"

	"github.com/klectr/klectr/internal/imageinfo"
)

// analyzeHEIF reports what the header of an ISO-BMFF file says. Go has no HEIF
// decoder, so the result has "pixels": false and no pixel measures; the
// verdict can only be too_small or ok. The header is streamed from r, never
// buffered whole, and no decode slot is taken.
func (b *Builtin) analyzeHEIF(r io.Reader) (*builtinResult, error) {
	info, err := imageinfo.Inspect(r)
	switch {
	case errors.Is(err, imageinfo.ErrUnsupported):
		return nil, &Error{Code: CodeImageUnsupported, Permanent: true, Message: err.Error(), Err: err}
	case errors.Is(err, imageinfo.ErrInvalid):
		return nil, &Error{Code: CodeImageUndecodable, Permanent: true, Message: err.Error(), Err: err}
	case err != nil:
		return nil, readImageError(err)
	}
	if info.Format != imageinfo.HEIC && info.Format != imageinfo.HEIF {
		// The magic bytes said ISO-BMFF; Inspect read something else.
		return nil, &Error{Code: CodeImageUndecodable, Permanent: true, Message: fmt.Sprintf("expected a HEIF file, found %s", info.Format)}
	}
	v := VerdictOK
	if min(info.Width, info.Height) < MinShortSide {
		v = VerdictTooSmall
	}
	return &builtinResult{
		Provider: "builtin",
		Version:  builtinVersion,
		Format:   string(info.Format),
		Width:    info.Width,
		Height:   info.Height,
		Pixels:   false,
		Verdict:  v,
	}, nil
}
