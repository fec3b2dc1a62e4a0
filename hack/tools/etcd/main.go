// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 as a module dependency
// (etcd's own main module cannot be required: it replaces its sub-modules with local paths).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
