package bench

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"math/rand/v2"
	"mime/multipart"
	"net/textproto"
)

// pngOf returns a PNG of about size bytes, the same bytes on every run: an
// image 256 pixels wide of fixed-seed RGB noise, which deflate cannot
// shrink, so the file is its raw pixels plus a small overhead. It has at
// least 16 rows (about 12 KB), so that analyzers see a real image.
func pngOf(size int) ([]byte, error) {
	const w = 256
	h := max(16, (size+w*3/2)/(w*3+1))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	r := rand.New(rand.NewPCG(9, 11))
	for i := 0; i < len(img.Pix); i += 4 {
		v := r.Uint32()
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = byte(v), byte(v>>8), byte(v>>16), 0xff
	}
	var b bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&b, img); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// multipartBody is one upload request: img in field "images". Every request
// of a run sends these bytes.
func multipartBody(img []byte, filename string) (body []byte, contentType string, err error) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="images"; filename=%q`, filename))
	h.Set("Content-Type", "application/octet-stream") // the server sniffs; it does not trust this
	pw, err := mw.CreatePart(h)
	if err == nil {
		_, err = pw.Write(img)
	}
	if err == nil {
		err = mw.Close()
	}
	return b.Bytes(), mw.FormDataContentType(), err
}
