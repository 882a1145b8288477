package ai_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/klectr/klectr/internal/ai"
)

// BenchmarkBuiltinPhoto measures one analysis of a 12 MP phone-sized JPEG:
// read, decode, reduce, measure.
func BenchmarkBuiltinPhoto(b *testing.B) {
	data, err := os.ReadFile("../../testdata/images/valid/photo-4032x3024.jpeg")
	if err != nil {
		b.Fatal(err)
	}
	a := ai.NewBuiltin(ai.BuiltinConfig{})
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := a.Analyze(b.Context(), ai.Image{AssetID: "bench", ContentType: "image/jpeg", Size: int64(len(data)), Body: bytes.NewReader(data)}); err != nil {
			b.Fatal(err)
		}
	}
}
