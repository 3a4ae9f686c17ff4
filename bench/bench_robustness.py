"""Robustness of the memorization check beyond the transforms it was designed for.

    .venv/bin/python bench/bench_robustness.py

Training set: 60 phantom patients' visits (half; the other half is the holdout) plus real or natural images
shipped with scikit-image (a fundus photo, and non-fundus images standing in for X-ray/skin/histology-like
frames without a field-of-view disc). Each cell: Y/- flagged under the public policy's thresholds, then the
aligned pixel score / embedding score of the transformed copy.
"""
import sys
import numpy as np, tempfile, io
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from PIL import Image, ImageDraw, ImageFont
from skimage import data as d
from synfundus_guard.data.folder import write_image_folder
from synfundus_guard.audit.runner import prepare_guard
from synfundus_guard.audit.memorization import score_images
from synfundus_guard.data.fov import resize_image
from synfundus_guard.data.perturb import random_copy, affine, jpeg
from synfundus_guard.data.phantom import PhantomPatient, render_visit
S=256
def rgb(a):
    a=a.astype(np.float32)/255.0
    return np.repeat(a[...,None],3,2) if a.ndim==2 else a[...,:3]
reals = {"retina": resize_image(rgb(d.retina()),S,S), "camera": resize_image(rgb(d.camera()),S,S),
         "astronaut": resize_image(rgb(d.astronaut()),S,S), "chelsea": resize_image(rgb(d.chelsea()),S,int(S*451/300)),
         "coins": resize_image(rgb(d.coins()),S,S)}
root=Path(tempfile.mkdtemp())
train=[]; hold=[]
for p in range(60):
    pt=PhantomPatient.from_seed(5,p); dest=train if p%2==0 else hold
    for v in range(2):
        dest.append((f"p{p}_{v}.png", render_visit(pt,visit=v,size=S,seed=5)[0], f"i{p}{v}", f"P{p}"))
for k,img in reals.items(): train.append((f"{k}.png", img, k, k))
write_image_folder(root/"train",train); write_image_folder(root/"holdout",hold)
g=prepare_guard(train_dir=root/"train", holdout_dir=root/"holdout", k=10, cache_dir=root/"c")
cal=g.calibration; te=cal.threshold(cal.embedding_sims,0.999); tp=cal.threshold(cal.pixel_nccs,0.999)
print("thresholds", round(te,3), round(tp,3))
rng=np.random.default_rng(0)
def stamp(img, text="PATIENT 12345 2024-01-02"):
    im=Image.fromarray((img*255).astype(np.uint8)); dr=ImageDraw.Draw(im)
    dr.text((5,5), text, fill=(255,255,255), font=ImageFont.load_default(size=14)); dr.text((5,S-20), text, fill=(255,255,0), font=ImageFont.load_default(size=12))
    return np.asarray(im,dtype=np.float32)/255
def crop(img,f=0.85):
    h,w=img.shape[:2]; ch,cw=int(h*f),int(w*f); y,x=(h-ch)//2+5,(w-cw)//2-4
    return img[y:y+ch,x:x+cw]
def hue(img):
    import skimage.color as c; hsv=c.rgb2hsv(img); hsv[...,0]=(hsv[...,0]+0.05)%1; hsv[...,1]*=0.8; return c.hsv2rgb(hsv).astype(np.float32)
from scipy import ndimage as ndi
T={"crop85":crop, "crop75":lambda i:crop(i,0.75), "blur1.5":lambda i:np.stack([ndi.gaussian_filter(i[...,c],1.5) for c in range(3)],2),
   "downres":lambda i:resize_image(i,int(i.shape[0]*0.55),int(i.shape[1]*0.55)), "upres":lambda i:resize_image(i,int(i.shape[0]*1.7),int(i.shape[1]*1.7)),
   "hue/sat":hue, "grey":lambda i:np.repeat(i.mean(2,keepdims=True),3,2), "stamp":stamp, "jpeg40":lambda i:jpeg(i,40),
   "vflip":lambda i:i[::-1], "rot90":lambda i:np.rot90(i).copy(), "rot15":lambda i:affine(i,dx=0,dy=0,angle=15,scale=1),
   "combined+stamp":lambda i:stamp(random_copy(i,rng)[0]), "pad":lambda i:np.pad(i,((20,20),(30,30),(0,0))),
   "aspect":lambda i:resize_image(i,i.shape[0],int(i.shape[1]*1.2))}
srcs={"phantom":train[0][1], **reals}
print("transform".ljust(16), "  ".join(k[:9].ljust(9) for k in srcs))
for tn,f in T.items():
    row=[]
    for sn,img in srcs.items():
        s=score_images(g.index,[f(img).astype(np.float32)],k=10)[0]
        flag = (s.embedding_sim>te) or (s.pixel_ncc>tp)
        row.append(f"{'Y' if flag else '-'}{s.pixel_ncc:.2f}/{s.embedding_sim:.2f}")
    print(tn.ljust(16), "  ".join(r.ljust(9) for r in row))
