package mongostore

import "testing"

func TestDetect(t *testing.T) {
	t.Parallel()
	minutes := int64(30)
	for _, tc := range []struct {
		name string
		h    hello
		b    buildInfo
		want server
	}{
		{"MongoDB standalone", hello{SessionTimeout: &minutes}, buildInfo{}, server{}},
		{"MongoDB replica set", hello{SetName: "rs0", SessionTimeout: &minutes}, buildInfo{}, server{transactions: true}},
		{"mongos", hello{Msg: "isdbgrid", SessionTimeout: &minutes}, buildInfo{}, server{transactions: true}},
		{"replica set without sessions", hello{SetName: "rs0"}, buildInfo{}, server{}},
		{"FerretDB", hello{SessionTimeout: &minutes}, buildInfo{FerretDB: "v1.24.2"}, server{ferretDB: "v1.24.2"}},
		{"FerretDB --repl-set-name", hello{SetName: "rs0", SessionTimeout: &minutes}, buildInfo{FerretDB: "v1.24.2"}, server{ferretDB: "v1.24.2"}},
	} {
		if got := detect(tc.h, tc.b); got != tc.want {
			t.Errorf("%s: detect = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
