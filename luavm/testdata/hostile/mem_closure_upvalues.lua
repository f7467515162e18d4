-- expect: memory
-- max_alloc_mib: 8
-- A closure made in a loop body captures fresh locals: each upvalue is
-- accounted, not only the closure (60 upvalues are ~3.4 KB of Go heap).
function handle(event, ctx)
  local keep = {}
  for i = 1, 1e9 do
    local a0,a1,a2,a3,a4,a5,a6,a7,a8,a9 = i,i,i,i,i,i,i,i,i,i
    local b0,b1,b2,b3,b4,b5,b6,b7,b8,b9 = i,i,i,i,i,i,i,i,i,i
    local c0,c1,c2,c3,c4,c5,c6,c7,c8,c9 = i,i,i,i,i,i,i,i,i,i
    local d0,d1,d2,d3,d4,d5,d6,d7,d8,d9 = i,i,i,i,i,i,i,i,i,i
    local e0,e1,e2,e3,e4,e5,e6,e7,e8,e9 = i,i,i,i,i,i,i,i,i,i
    local f0,f1,f2,f3,f4,f5,f6,f7,f8,f9 = i,i,i,i,i,i,i,i,i,i
    keep[i] = function()
      return a0,a1,a2,a3,a4,a5,a6,a7,a8,a9,b0,b1,b2,b3,b4,b5,b6,b7,b8,b9,
        c0,c1,c2,c3,c4,c5,c6,c7,c8,c9,d0,d1,d2,d3,d4,d5,d6,d7,d8,d9,
        e0,e1,e2,e3,e4,e5,e6,e7,e8,e9,f0,f1,f2,f3,f4,f5,f6,f7,f8,f9
    end
  end
end
