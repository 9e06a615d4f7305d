document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows),asc=th.dataset.dir!=='asc';
      t.querySelectorAll('th').forEach(function(h){h.dataset.dir='';h.querySelector('.arrow').textContent='\u2195';});
      th.dataset.dir=asc?'asc':'desc';th.querySelector('.arrow').textContent=asc?'\u2191':'\u2193';
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
        if(x===undefined){x=a.cells[i].textContent;y=b.cells[i].textContent;}
        var nx=parseFloat(x),ny=parseFloat(y),c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
        return asc?c:-c;});
      rows.forEach(function(r){tb.appendChild(r);});
    });
  });
});
